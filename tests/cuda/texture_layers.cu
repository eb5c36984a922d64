// Layered arrays, cubemaps and texture gather, against a CPU reference of the
// hardware's rules: 1-D and 2-D layered textures read point and linear (the layer
// index clamped), a cubemap and a layered cubemap sampled in many directions (the
// face-selection table of the CUDA programming guide), tex2Dgather of each
// component (the bilinear footprint counter-clockwise from the lower left), and
// layered and cubemap surfaces written in kernels and read back.
#define TEST_NAME "texture_layers"
#include "check.cuh"

#include <vector>

static cudaTextureObject_t texture_of(cudaArray_t a, cudaTextureFilterMode filter, bool normalized) {
    cudaResourceDesc res = {};
    res.resType = cudaResourceTypeArray;
    res.res.array.array = a;
    cudaTextureDesc td = {};
    for (int k = 0; k < 3; ++k) td.addressMode[k] = cudaAddressModeClamp;
    td.filterMode = filter;
    td.readMode = cudaReadModeElementType;
    td.normalizedCoords = normalized;
    cudaTextureObject_t t = 0;
    CHECK(cudaCreateTextureObject(&t, &res, &td, nullptr));
    return t;
}

static void upload(cudaArray_t a, const float *host, size_t w, size_t h, size_t depth) {
    cudaMemcpy3DParms p = {};
    p.srcPtr = make_cudaPitchedPtr((void *)host, w * sizeof(float), w, h);
    p.dstArray = a;
    p.extent = make_cudaExtent(w, h, depth);
    p.kind = cudaMemcpyHostToDevice;
    CHECK(cudaMemcpy3D(&p));
}

__global__ void read_1d_layered(cudaTextureObject_t t, const float *x, const int *layer, float *out, int n) {
    const int i = threadIdx.x;
    if (i < n) out[i] = tex1DLayered<float>(t, x[i], layer[i]);
}

__global__ void read_2d_layered(cudaTextureObject_t t, const float2 *at, const int *layer, float *out, int n) {
    const int i = threadIdx.x;
    if (i < n) out[i] = tex2DLayered<float>(t, at[i].x, at[i].y, layer[i]);
}

__global__ void read_cube(cudaTextureObject_t t, const float4 *dir, float *out, int n, int layered) {
    const int i = threadIdx.x;
    if (i >= n) return;
    const float4 d = dir[i];
    out[i] = layered ? texCubemapLayered<float>(t, d.x, d.y, d.z, (int)d.w) : texCubemap<float>(t, d.x, d.y, d.z);
}

__global__ void gather(cudaTextureObject_t t, const float2 *at, float4 *out, int n) {
    const int i = threadIdx.x;
    if (i >= n) return;
    out[4 * i + 0] = tex2Dgather<float4>(t, at[i].x, at[i].y, 0);
    out[4 * i + 1] = tex2Dgather<float4>(t, at[i].x, at[i].y, 1);
    out[4 * i + 2] = tex2Dgather<float4>(t, at[i].x, at[i].y, 2);
    out[4 * i + 3] = tex2Dgather<float4>(t, at[i].x, at[i].y, 3);
}

// Every texel of every layer of a layered 2-D surface: layer * 1000 + y * 10 + x.
__global__ void write_layers(cudaSurfaceObject_t s, int w, int h, int layers) {
    const int x = threadIdx.x, y = threadIdx.y;
    for (int l = 0; l < layers; ++l)
        if (x < w && y < h) surf2DLayeredwrite((float)(l * 1000 + y * 10 + x), s, x * 4, y, l);
}

// Each face's texels of a cubemap surface: face * 100 + y * 10 + x; then reads a
// 1-D layered surface back in another layer's order.
__global__ void write_faces(cudaSurfaceObject_t s, int w) {
    const int x = threadIdx.x, y = threadIdx.y;
    for (int f = 0; f < 6; ++f)
        if (x < w && y < w) surfCubemapwrite((float)(f * 100 + y * 10 + x), s, x * 4, y, f);
}

__global__ void read_1d_layers(cudaSurfaceObject_t s, float *out, int w, int layers) {
    const int x = threadIdx.x;
    for (int l = 0; l < layers; ++l) {
        float v;
        surf1DLayeredread(&v, s, x * 4, l);
        if (x < w) out[l * w + x] = v;
    }
}

// The CUDA programming guide's cubemap table: face, and the point on it in [0, 1].
static int cube_face(float x, float y, float z, float *s, float *t) {
    const float ax = fabsf(x), ay = fabsf(y), az = fabsf(z);
    float m, sc, tc;
    int face;
    if (ax >= ay && ax >= az) {
        face = x >= 0 ? 0 : 1, m = ax, sc = x >= 0 ? -z : z, tc = -y;
    } else if (ay >= az) {
        face = y >= 0 ? 2 : 3, m = ay, sc = x, tc = y >= 0 ? z : -z;
    } else {
        face = z >= 0 ? 4 : 5, m = az, sc = z >= 0 ? x : -x, tc = -y;
    }
    *s = (sc / m + 1) / 2;
    *t = (tc / m + 1) / 2;
    return face;
}

template <typename T>
static T *device_copy(const std::vector<T> &v) {
    T *d = nullptr;
    CHECK(cudaMalloc(&d, v.size() * sizeof(T)));
    CHECK(cudaMemcpy(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}

template <typename T>
static std::vector<T> host_copy(const T *d, size_t n) {
    std::vector<T> v(n);
    CHECK(cudaMemcpy(v.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
    return v;
}

static void one_d_layered() {
    const int w = 16, layers = 3;
    std::vector<float> host(w * layers);
    for (int l = 0; l < layers; ++l)
        for (int x = 0; x < w; ++x) host[l * w + x] = 100.0f * l + x;
    cudaChannelFormatDesc f = cudaCreateChannelDesc<float>();
    cudaArray_t a;
    CHECK(cudaMalloc3DArray(&a, &f, make_cudaExtent(w, 0, layers), cudaArrayLayered));
    upload(a, host.data(), w, 1, layers);
    for (int linear = 0; linear < 2; ++linear) {
        cudaTextureObject_t t = texture_of(a, linear ? cudaFilterModeLinear : cudaFilterModePoint, false);
        std::vector<float> xs = {0.5f, 3.5f, 2.0f, 15.5f, 40.0f, 7.25f};
        std::vector<int> ls = {0, 1, 2, 2, 1, 9};
        const int n = (int)xs.size();
        float *dx = device_copy(xs), *out = nullptr;
        int *dl = device_copy(ls);
        CHECK(cudaMalloc(&out, n * sizeof(float)));
        read_1d_layered<<<1, n>>>(t, dx, dl, out, n);
        CHECK_LAUNCH();
        std::vector<float> got = host_copy(out, n);
        for (int i = 0; i < n; ++i) {
            const int l = ls[i] < layers ? ls[i] : layers - 1;
            float want;
            if (linear) {
                const float u = xs[i] - 0.5f;
                const float i0 = floorf(u), a0 = roundf((u - i0) * 256) / 256;
                auto at = [&](int x) { return host[l * w + (x < 0 ? 0 : x >= w ? w - 1 : x)]; };
                want = (1 - a0) * at((int)i0) + a0 * at((int)i0 + 1);
            } else {
                const int x = (int)floorf(xs[i]);
                want = host[l * w + (x >= w ? w - 1 : x)];
            }
            if (fabsf(got[i] - want) > 1e-4f)
                fail("1-D layered (%s) x=%.2f layer %d: %f, expected %f", linear ? "linear" : "point", xs[i], ls[i], got[i], want);
        }
        CHECK(cudaDestroyTextureObject(t));
        CHECK(cudaFree(dx));
        CHECK(cudaFree(dl));
        CHECK(cudaFree(out));
    }
    CHECK(cudaFreeArray(a));
}

static void two_d_layered() {
    const int w = 8, h = 4, layers = 5;
    std::vector<float> host(w * h * layers);
    for (int l = 0; l < layers; ++l)
        for (int y = 0; y < h; ++y)
            for (int x = 0; x < w; ++x) host[(l * h + y) * w + x] = 1000.0f * l + 10 * y + x;
    cudaChannelFormatDesc f = cudaCreateChannelDesc<float>();
    cudaArray_t a;
    CHECK(cudaMalloc3DArray(&a, &f, make_cudaExtent(w, h, layers), cudaArrayLayered));
    upload(a, host.data(), w, h, layers);
    cudaTextureObject_t t = texture_of(a, cudaFilterModeLinear, true);
    std::vector<float2> at = {{0.5f / w, 0.5f / h}, {2.0f / w, 1.5f / h}, {0.9f, 0.9f}, {0.3f, 0.1f}, {1.5f, -1.0f}};
    std::vector<int> ls = {0, 1, 4, 7, 2};
    const int n = (int)at.size();
    float2 *dat = device_copy(at);
    int *dl = device_copy(ls);
    float *out = nullptr;
    CHECK(cudaMalloc(&out, n * sizeof(float)));
    read_2d_layered<<<1, n>>>(t, dat, dl, out, n);
    CHECK_LAUNCH();
    std::vector<float> got = host_copy(out, n);
    for (int i = 0; i < n; ++i) {
        const int l = ls[i] < layers ? ls[i] : layers - 1;
        auto texel = [&](int x, int y) {
            x = x < 0 ? 0 : x >= w ? w - 1 : x;
            y = y < 0 ? 0 : y >= h ? h - 1 : y;
            return host[(l * h + y) * w + x];
        };
        const float u = at[i].x * w - 0.5f, v = at[i].y * h - 0.5f;
        const float i0 = floorf(u), j0 = floorf(v);
        const float a0 = roundf((u - i0) * 256) / 256, b0 = roundf((v - j0) * 256) / 256;
        const float want = (1 - a0) * (1 - b0) * texel((int)i0, (int)j0) + a0 * (1 - b0) * texel((int)i0 + 1, (int)j0) +
                           (1 - a0) * b0 * texel((int)i0, (int)j0 + 1) + a0 * b0 * texel((int)i0 + 1, (int)j0 + 1);
        if (fabsf(got[i] - want) > 1e-2f)
            fail("2-D layered (%.3f, %.3f) layer %d: %f, expected %f", at[i].x, at[i].y, ls[i], got[i], want);
    }
    CHECK(cudaDestroyTextureObject(t));
    CHECK(cudaFreeArray(a));
    CHECK(cudaFree(dat));
    CHECK(cudaFree(dl));
    CHECK(cudaFree(out));
}

static void cubemaps(bool layered) {
    const int w = 4, cubes = layered ? 2 : 1, faces = 6 * cubes;
    std::vector<float> host(w * w * faces);
    for (int f = 0; f < faces; ++f)
        for (int y = 0; y < w; ++y)
            for (int x = 0; x < w; ++x) host[(f * w + y) * w + x] = 100.0f * f + 10 * y + x;
    cudaChannelFormatDesc fd = cudaCreateChannelDesc<float>();
    cudaArray_t a;
    CHECK(cudaMalloc3DArray(&a, &fd, make_cudaExtent(w, w, faces),
                            cudaArrayCubemap | (layered ? cudaArrayLayered : 0)));
    upload(a, host.data(), w, w, faces);
    cudaTextureObject_t t = texture_of(a, cudaFilterModePoint, true);
    std::vector<float4> dirs;
    const float axes[6][3] = {{1, 0, 0}, {-1, 0, 0}, {0, 1, 0}, {0, -1, 0}, {0, 0, 1}, {0, 0, -1}};
    for (auto &ax : axes) dirs.push_back(make_float4(ax[0], ax[1], ax[2], 0));
    // Off-centre directions that land on distinct texels of each face.
    const float offs[4][2] = {{0.3f, -0.6f}, {-0.7f, 0.2f}, {0.55f, 0.55f}, {-0.1f, -0.9f}};
    for (int f = 0; f < 6; ++f)
        for (auto &o : offs) {
            float d[3] = {0, 0, 0};
            const int major = f / 2;
            d[major] = (f % 2) ? -2.0f : 2.0f;
            d[(major + 1) % 3] = 2.0f * o[0];
            d[(major + 2) % 3] = 2.0f * o[1];
            dirs.push_back(make_float4(d[0], d[1], d[2], (float)(dirs.size() % (cubes + 1))));
        }
    const int n = (int)dirs.size();
    float4 *dd = device_copy(dirs);
    float *out = nullptr;
    CHECK(cudaMalloc(&out, n * sizeof(float)));
    read_cube<<<1, n>>>(t, dd, out, n, layered);
    CHECK_LAUNCH();
    std::vector<float> got = host_copy(out, n);
    for (int i = 0; i < n; ++i) {
        float s, tc;
        const int face = cube_face(dirs[i].x, dirs[i].y, dirs[i].z, &s, &tc);
        int cube = layered ? (int)dirs[i].w : 0;
        if (cube >= cubes) cube = cubes - 1;
        int x = (int)floorf(s * w), y = (int)floorf(tc * w);
        x = x < 0 ? 0 : x >= w ? w - 1 : x;
        y = y < 0 ? 0 : y >= w ? w - 1 : y;
        const float want = host[((6 * cube + face) * w + y) * w + x];
        if (got[i] != want)
            fail("cubemap%s (%.2f, %.2f, %.2f) layer %d: %f, expected %f (face %d)", layered ? " layered" : "",
                 dirs[i].x, dirs[i].y, dirs[i].z, (int)dirs[i].w, got[i], want, face);
    }
    CHECK(cudaDestroyTextureObject(t));
    CHECK(cudaFreeArray(a));
    CHECK(cudaFree(dd));
    CHECK(cudaFree(out));
}

static void gathers() {
    const int w = 5, h = 4;
    std::vector<float4> host(w * h);
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x) {
            const float v = 10.0f * y + x;
            host[y * w + x] = make_float4(v, v + 100, v + 200, v + 300);
        }
    cudaChannelFormatDesc f = cudaCreateChannelDesc<float4>();
    cudaArray_t a;
    CHECK(cudaMallocArray(&a, &f, w, h, cudaArrayTextureGather));
    CHECK(cudaMemcpy2DToArray(a, 0, 0, host.data(), w * sizeof(float4), w * sizeof(float4), h, cudaMemcpyHostToDevice));
    cudaTextureObject_t t = texture_of(a, cudaFilterModePoint, false);
    std::vector<float2> at = {{1.2f, 1.3f}, {2.0f, 2.0f}, {0.1f, 0.1f}, {4.9f, 3.9f}, {3.5f, 0.75f}};
    const int n = (int)at.size();
    float2 *dat = device_copy(at);
    float4 *out = nullptr;
    CHECK(cudaMalloc(&out, 4 * n * sizeof(float4)));
    gather<<<1, n>>>(t, dat, out, n);
    CHECK_LAUNCH();
    std::vector<float4> got = host_copy(out, 4 * n);
    for (int i = 0; i < n; ++i) {
        const int i0 = (int)floorf(at[i].x - 0.5f), j0 = (int)floorf(at[i].y - 0.5f);
        auto texel = [&](int x, int y, int c) {
            x = x < 0 ? 0 : x >= w ? w - 1 : x;
            y = y < 0 ? 0 : y >= h ? h - 1 : y;
            const float4 v = host[y * w + x];
            return c == 0 ? v.x : c == 1 ? v.y : c == 2 ? v.z : v.w;
        };
        for (int c = 0; c < 4; ++c) {
            const float4 g = got[4 * i + c];
            const float want[4] = {texel(i0, j0 + 1, c), texel(i0 + 1, j0 + 1, c), texel(i0 + 1, j0, c), texel(i0, j0, c)};
            if (g.x != want[0] || g.y != want[1] || g.z != want[2] || g.w != want[3])
                fail("gather comp %d at (%.2f, %.2f): (%g %g %g %g), expected (%g %g %g %g)", c, at[i].x, at[i].y,
                     g.x, g.y, g.z, g.w, want[0], want[1], want[2], want[3]);
        }
    }
    CHECK(cudaDestroyTextureObject(t));
    CHECK(cudaFreeArray(a));
    CHECK(cudaFree(dat));
    CHECK(cudaFree(out));
}

static cudaSurfaceObject_t surface_of(cudaArray_t a) {
    cudaResourceDesc res = {};
    res.resType = cudaResourceTypeArray;
    res.res.array.array = a;
    cudaSurfaceObject_t s = 0;
    CHECK(cudaCreateSurfaceObject(&s, &res));
    return s;
}

static void surfaces() {
    cudaChannelFormatDesc f = cudaCreateChannelDesc<float>();
    // A layered 2-D surface written in a kernel, copied out whole.
    {
        const int w = 6, h = 3, layers = 4;
        cudaArray_t a;
        CHECK(cudaMalloc3DArray(&a, &f, make_cudaExtent(w, h, layers), cudaArrayLayered | cudaArraySurfaceLoadStore));
        cudaSurfaceObject_t s = surface_of(a);
        write_layers<<<1, dim3(w, h)>>>(s, w, h, layers);
        CHECK_LAUNCH();
        std::vector<float> back(w * h * layers, -1);
        cudaMemcpy3DParms p = {};
        p.srcArray = a;
        p.dstPtr = make_cudaPitchedPtr(back.data(), w * sizeof(float), w, h);
        p.extent = make_cudaExtent(w, h, layers);
        p.kind = cudaMemcpyDeviceToHost;
        CHECK(cudaMemcpy3D(&p));
        for (int l = 0; l < layers; ++l)
            for (int y = 0; y < h; ++y)
                for (int x = 0; x < w; ++x)
                    if (back[(l * h + y) * w + x] != 1000.0f * l + 10 * y + x) {
                        fail("layered surface (%d, %d, layer %d): %f", x, y, l, back[(l * h + y) * w + x]);
                        l = layers, y = h, x = w;
                    }
        CHECK(cudaDestroySurfaceObject(s));
        CHECK(cudaFreeArray(a));
    }
    // A cubemap surface written face by face, then sampled as a cubemap texture.
    {
        const int w = 4;
        cudaArray_t a;
        CHECK(cudaMalloc3DArray(&a, &f, make_cudaExtent(w, w, 6), cudaArrayCubemap | cudaArraySurfaceLoadStore));
        cudaSurfaceObject_t s = surface_of(a);
        write_faces<<<1, dim3(w, w)>>>(s, w);
        CHECK_LAUNCH();
        cudaTextureObject_t t = texture_of(a, cudaFilterModePoint, true);
        std::vector<float4> dirs = {{1, 0.2f, -0.3f, 0}, {-1, -0.6f, 0.7f, 0}, {0.4f, 1, 0.1f, 0},
                                    {0.1f, -1, 0.8f, 0}, {-0.3f, 0.3f, 1, 0}, {0.9f, 0.2f, -1, 0}};
        float4 *dd = device_copy(dirs);
        float *out = nullptr;
        CHECK(cudaMalloc(&out, dirs.size() * sizeof(float)));
        read_cube<<<1, (int)dirs.size()>>>(t, dd, out, (int)dirs.size(), 0);
        CHECK_LAUNCH();
        std::vector<float> got = host_copy(out, dirs.size());
        for (size_t i = 0; i < dirs.size(); ++i) {
            float sc, tc;
            const int face = cube_face(dirs[i].x, dirs[i].y, dirs[i].z, &sc, &tc);
            int x = (int)floorf(sc * w), y = (int)floorf(tc * w);
            x = x >= w ? w - 1 : x;
            y = y >= w ? w - 1 : y;
            const float want = 100.0f * face + 10 * y + x;
            if (got[i] != want) fail("cubemap surface read as a texture, direction %zu: %f, expected %f", i, got[i], want);
        }
        CHECK(cudaDestroyTextureObject(t));
        CHECK(cudaDestroySurfaceObject(s));
        CHECK(cudaFreeArray(a));
        CHECK(cudaFree(dd));
        CHECK(cudaFree(out));
    }
    // A 1-D layered surface filled by a copy, read in a kernel.
    {
        const int w = 32, layers = 3;
        std::vector<float> host(w * layers);
        for (int i = 0; i < w * layers; ++i) host[i] = 0.5f * i;
        cudaArray_t a;
        CHECK(cudaMalloc3DArray(&a, &f, make_cudaExtent(w, 0, layers), cudaArrayLayered | cudaArraySurfaceLoadStore));
        upload(a, host.data(), w, 1, layers);
        cudaSurfaceObject_t s = surface_of(a);
        float *out = nullptr;
        CHECK(cudaMalloc(&out, w * layers * sizeof(float)));
        read_1d_layers<<<1, w>>>(s, out, w, layers);
        CHECK_LAUNCH();
        std::vector<float> got = host_copy(out, w * layers);
        for (int i = 0; i < w * layers; ++i)
            if (got[i] != host[i]) { fail("1-D layered surface [%d]: %f, expected %f", i, got[i], host[i]); break; }
        CHECK(cudaDestroySurfaceObject(s));
        CHECK(cudaFreeArray(a));
        CHECK(cudaFree(out));
    }
}

int main() {
    one_d_layered();
    two_d_layered();
    cubemaps(false);
    cubemaps(true);
    gathers();
    surfaces();
    // A cubemap whose faces are not square is refused.
    cudaChannelFormatDesc f = cudaCreateChannelDesc<float>();
    cudaArray_t bad = nullptr;
    expect_true(cudaMalloc3DArray(&bad, &f, make_cudaExtent(4, 5, 6), cudaArrayCubemap) == cudaErrorInvalidValue,
                "a cubemap of faces that are not square refused");
    cudaGetLastError();
    return finish();
}
