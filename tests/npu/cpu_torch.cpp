// Test scaffolding for CI, not part of xpupool: lets torch_npu 2.14 load beside
// PyPI's x86-64 torch 2.14, which is the CUDA build. PyPI has no CPU build of
// torch for x86-64 (on Ascend hosts, which are aarch64, PyPI's torch is the CPU
// build, and Ascend's x86-64 instructions install the CPU build from PyTorch's
// own index, which CI cannot reach). In the CUDA build, libc10_cuda registers
// its allocator-configuration keys when it loads; torch_npu then registers
// its own, some with the same names, and c10 refuses the duplicate by throwing
// from a static initialiser, which ends the process.
//
// Loaded with LD_PRELOAD, this interposes c10's getMutableKeys() (which
// torch_npu's inlined registration calls through the PLT): the first time
// libtorch_npu asks for the key set, the CUDA build's keys are dropped from it
// and c10's own common keys (expandable_segments, max_split_size_mb, …) kept,
// so torch_npu registers its keys into the set a CPU build would have, and its
// parser hook replaces CUDA's as it would anyway.
#include <dlfcn.h>
#include <string>
#include <unordered_set>

namespace c10 { namespace CachingAllocator {
struct AcceleratorAllocatorConfig {
    static std::unordered_set<std::string>& getMutableKeys();
};
} }

using Keys = std::unordered_set<std::string>;

Keys& c10::CachingAllocator::AcceleratorAllocatorConfig::getMutableKeys() {
    // libc10 is loaded in torch's local scope, so RTLD_NEXT does not see it: it
    // is found by its name, already loaded by whoever calls this.
    static auto real = reinterpret_cast<Keys& (*)()>(dlsym(
        dlopen("libc10.so", RTLD_LAZY | RTLD_NOLOAD),
        "_ZN3c1016CachingAllocator26AcceleratorAllocatorConfig14getMutableKeysB5cxx11Ev"));
    static bool cleared = false;
    Keys& keys = real();
    Dl_info caller;
    if (!cleared && dladdr(__builtin_return_address(0), &caller) && caller.dli_fname &&
        std::string(caller.dli_fname).find("libtorch_npu.so") != std::string::npos) {
        // c10's own keys (c10/core/AllocatorConfig.cpp), which every build has.
        keys = {"large_segment_size_mb", "max_split_size_mb", "max_non_split_rounding_mb",
                "garbage_collection_threshold", "roundup_power2_divisions",
                "expandable_segments", "pinned_use_background_threads"};
        cleared = true;
    }
    return keys;
}
