// Texture objects, sampled against a CPU reference of the hardware's rules: a 2-D float
// array with each address mode and filter, coordinates normalised or not (linear
// filtering with the 8-bit fraction of its weights); uchar4 read as normalised floats;
// integer fetches from linear memory (tex1Dfetch); a texture over pitched memory; a 1-D
// array; copies into and out of arrays (cudaMemcpy2DToArray, cudaMemcpy2DFromArray).
#define TEST_NAME "textures"
#include "check.cuh"

static const int W = 8, H = 5;

__global__ void sample2d(cudaTextureObject_t t, const float2 *at, float *out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = tex2D<float>(t, at[i].x, at[i].y);
}

__global__ void sample_uchar4(cudaTextureObject_t t, float4 *out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = tex2D<float4>(t, i + 0.5f, 0.5f);
}

__global__ void fetch1d(cudaTextureObject_t t, int *out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = tex1Dfetch<int>(t, i * 3 - 4);
}

__global__ void sample1d(cudaTextureObject_t t, const float *at, float *out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = tex1D<float>(t, at[i]);
}

// The hardware's rules, on the CPU.
static int address(int i, int n, cudaTextureAddressMode mode, bool *border) {
    *border = false;
    if (i >= 0 && i < n) return i;
    switch (mode) {
    case cudaAddressModeWrap: return ((i % n) + n) % n;
    case cudaAddressModeMirror: {
        int m = ((i % (2 * n)) + 2 * n) % (2 * n);
        return m < n ? m : 2 * n - 1 - m;
    }
    case cudaAddressModeBorder: *border = true; return 0;
    default: return i < 0 ? 0 : n - 1;
    }
}

static float texel(const float *data, int x, int y, cudaTextureAddressMode mode) {
    bool bx, by;
    const int ix = address(x, W, mode, &bx), iy = address(y, H, mode, &by);
    return (bx || by) ? 0.0f : data[iy * W + ix];
}

static float reference(const float *data, float x, float y, cudaTextureAddressMode mode, bool linear, bool normalized) {
    if (normalized) {
        x *= W;
        y *= H;
    } else if (mode == cudaAddressModeWrap || mode == cudaAddressModeMirror) {
        mode = cudaAddressModeClamp;  // only with normalised coordinates
    }
    if (!linear) return texel(data, (int)floorf(x), (int)floorf(y), mode);
    const float xb = x - 0.5f, yb = y - 0.5f;
    const int x0 = (int)floorf(xb), y0 = (int)floorf(yb);
    const float a = roundf((xb - floorf(xb)) * 256.0f) / 256.0f;
    const float b = roundf((yb - floorf(yb)) * 256.0f) / 256.0f;
    return (1 - a) * (1 - b) * texel(data, x0, y0, mode) + a * (1 - b) * texel(data, x0 + 1, y0, mode) +
           (1 - a) * b * texel(data, x0, y0 + 1, mode) + a * b * texel(data, x0 + 1, y0 + 1, mode);
}

static cudaTextureObject_t make(cudaResourceDesc res, cudaTextureAddressMode mode, cudaTextureFilterMode filter,
                                bool normalized, cudaTextureReadMode read) {
    cudaTextureDesc td = {};
    td.addressMode[0] = td.addressMode[1] = td.addressMode[2] = mode;
    td.filterMode = filter;
    td.normalizedCoords = normalized;
    td.readMode = read;
    cudaTextureObject_t t;
    CHECK(cudaCreateTextureObject(&t, &res, &td, nullptr));
    return t;
}

int main() {
    // A 2-D float array, filled from the host and read back.
    float data[W * H];
    for (int i = 0; i < W * H; ++i) data[i] = (float)(i * 7 % 23) - 5.0f;
    cudaChannelFormatDesc fdesc = cudaCreateChannelDesc<float>();
    cudaArray_t arr;
    CHECK(cudaMallocArray(&arr, &fdesc, W, H));
    CHECK(cudaMemcpy2DToArray(arr, 0, 0, data, W * sizeof(float), W * sizeof(float), H, cudaMemcpyHostToDevice));
    float back[W * H];
    CHECK(cudaMemcpy2DFromArray(back, W * sizeof(float), arr, 0, 0, W * sizeof(float), H, cudaMemcpyDeviceToHost));
    if (memcmp(back, data, sizeof data) != 0) fail("an array read back differs");
    cudaResourceDesc res = {};
    res.resType = cudaResourceTypeArray;
    res.res.array.array = arr;

    const int n = 64;
    float2 at[n];
    for (int i = 0; i < n; ++i) at[i] = make_float2(-3.3f + 0.37f * i, 5.1f - 0.29f * i);
    float2 *d_at;
    float *d_out;
    CHECK(cudaMalloc((void **)&d_at, sizeof at));
    CHECK(cudaMalloc((void **)&d_out, n * sizeof(float)));
    const cudaTextureAddressMode modes[] = {cudaAddressModeWrap, cudaAddressModeClamp, cudaAddressModeMirror, cudaAddressModeBorder};
    int checked = 0;
    for (int normalized = 0; normalized < 2; ++normalized) {
        float2 coords[n];
        for (int i = 0; i < n; ++i)
            coords[i] = normalized ? make_float2(at[i].x / W, at[i].y / H) : at[i];
        CHECK(cudaMemcpy(d_at, coords, sizeof coords, cudaMemcpyHostToDevice));
        for (cudaTextureAddressMode mode : modes)
            for (int linear = 0; linear < 2; ++linear) {
                cudaTextureObject_t t = make(res, mode, linear ? cudaFilterModeLinear : cudaFilterModePoint, normalized,
                                             cudaReadModeElementType);
                sample2d<<<1, n>>>(t, d_at, d_out, n);
                CHECK_LAUNCH();
                float out[n];
                CHECK(cudaMemcpy(out, d_out, sizeof out, cudaMemcpyDeviceToHost));
                for (int i = 0; i < n; ++i) {
                    const float want = reference(data, coords[i].x, coords[i].y, mode, linear, normalized);
                    if (fabsf(out[i] - want) > 1e-3f * (1.0f + fabsf(want))) {
                        fail("mode %d %s %s at (%g, %g): expected %g got %g", (int)mode, linear ? "linear" : "point",
                             normalized ? "normalised" : "texels", coords[i].x, coords[i].y, want, out[i]);
                        break;
                    }
                    ++checked;
                }
                CHECK(cudaDestroyTextureObject(t));
            }
    }

    // The filter weight as the device computes it: a sweep across one texel step of row 1
    // (texels 5 and 12), where the fetch is 5 + 7 * weight. Printed, for comparing the mock's
    // weights with a GPU's (scripts/gpu-check.sh collects the notes).
    {
        const int m = 17;
        float2 sweep[m];
        for (int k = 0; k < m; ++k) sweep[k] = make_float2(0.5f + k / 16.0f, 1.5f);
        CHECK(cudaMemcpy(d_at, sweep, sizeof sweep, cudaMemcpyHostToDevice));
        cudaTextureObject_t t = make(res, cudaAddressModeClamp, cudaFilterModeLinear, false, cudaReadModeElementType);
        sample2d<<<1, m>>>(t, d_at, d_out, m);
        CHECK_LAUNCH();
        float got[m];
        CHECK(cudaMemcpy(got, d_out, sizeof got, cudaMemcpyDeviceToHost));
        printf("note: linear filter weights x256 across one texel:");
        for (int k = 0; k < m; ++k) printf(" %.3f", (got[k] - 5.0f) / 7.0f * 256.0f);
        printf("\n");
        CHECK(cudaDestroyTextureObject(t));
    }

    // uchar4 read as normalised floats.
    cudaChannelFormatDesc cdesc = cudaCreateChannelDesc<uchar4>();
    cudaArray_t carr;
    CHECK(cudaMallocArray(&carr, &cdesc, 4, 1));
    const uchar4 px[4] = {{0, 51, 102, 255}, {255, 0, 0, 0}, {1, 2, 3, 4}, {128, 64, 32, 16}};
    CHECK(cudaMemcpy2DToArray(carr, 0, 0, px, sizeof px, sizeof px, 1, cudaMemcpyHostToDevice));
    cudaResourceDesc cres = {};
    cres.resType = cudaResourceTypeArray;
    cres.res.array.array = carr;
    cudaTextureObject_t ct = make(cres, cudaAddressModeClamp, cudaFilterModePoint, false, cudaReadModeNormalizedFloat);
    float4 *d4;
    CHECK(cudaMalloc((void **)&d4, 4 * sizeof(float4)));
    sample_uchar4<<<1, 4>>>(ct, d4, 4);
    CHECK_LAUNCH();
    float4 got4[4];
    CHECK(cudaMemcpy(got4, d4, sizeof got4, cudaMemcpyDeviceToHost));
    for (int i = 0; i < 4; ++i) {
        const float want[4] = {px[i].x / 255.0f, px[i].y / 255.0f, px[i].z / 255.0f, px[i].w / 255.0f};
        const float have[4] = {got4[i].x, got4[i].y, got4[i].z, got4[i].w};
        for (int c = 0; c < 4; ++c)
            if (fabsf(have[c] - want[c]) > 1e-6f) fail("uchar4 texel %d channel %d: expected %g got %g", i, c, want[c], have[c]);
    }

    // Integer fetches from linear memory, out-of-range ones clamped.
    const int m = 16;
    int lin[m];
    for (int i = 0; i < m; ++i) lin[i] = 1000 + i * i;
    int *d_lin, *d_iout;
    CHECK(cudaMalloc((void **)&d_lin, sizeof lin));
    CHECK(cudaMalloc((void **)&d_iout, 8 * sizeof(int)));
    CHECK(cudaMemcpy(d_lin, lin, sizeof lin, cudaMemcpyHostToDevice));
    cudaResourceDesc lres = {};
    lres.resType = cudaResourceTypeLinear;
    lres.res.linear.devPtr = d_lin;
    lres.res.linear.desc = cudaCreateChannelDesc<int>();
    lres.res.linear.sizeInBytes = sizeof lin;
    cudaTextureObject_t lt = make(lres, cudaAddressModeClamp, cudaFilterModePoint, false, cudaReadModeElementType);
    fetch1d<<<1, 8>>>(lt, d_iout, 8);
    CHECK_LAUNCH();
    int iout[8];
    CHECK(cudaMemcpy(iout, d_iout, sizeof iout, cudaMemcpyDeviceToHost));
    for (int i = 0; i < 8; ++i) {
        int j = i * 3 - 4;
        j = j < 0 ? 0 : (j >= m ? m - 1 : j);
        if (iout[i] != lin[j]) fail("tex1Dfetch %d: expected %d got %d", i * 3 - 4, lin[j], iout[i]);
    }

    // A texture over pitched memory: the same samples as the array's.
    float *pitched;
    size_t pitch;
    CHECK(cudaMallocPitch((void **)&pitched, &pitch, W * sizeof(float), H));
    CHECK(cudaMemcpy2D(pitched, pitch, data, W * sizeof(float), W * sizeof(float), H, cudaMemcpyHostToDevice));
    cudaResourceDesc pres = {};
    pres.resType = cudaResourceTypePitch2D;
    pres.res.pitch2D.devPtr = pitched;
    pres.res.pitch2D.desc = fdesc;
    pres.res.pitch2D.width = W;
    pres.res.pitch2D.height = H;
    pres.res.pitch2D.pitchInBytes = pitch;
    cudaTextureObject_t pt = make(pres, cudaAddressModeClamp, cudaFilterModeLinear, false, cudaReadModeElementType);
    CHECK(cudaMemcpy(d_at, at, sizeof at, cudaMemcpyHostToDevice));
    sample2d<<<1, n>>>(pt, d_at, d_out, n);
    CHECK_LAUNCH();
    float pout[n];
    CHECK(cudaMemcpy(pout, d_out, sizeof pout, cudaMemcpyDeviceToHost));
    for (int i = 0; i < n; ++i) {
        const float want = reference(data, at[i].x, at[i].y, cudaAddressModeClamp, true, false);
        if (fabsf(pout[i] - want) > 1e-3f * (1.0f + fabsf(want))) {
            fail("pitched at (%g, %g): expected %g got %g", at[i].x, at[i].y, want, pout[i]);
            break;
        }
    }

    // A 1-D array, linear filtering at texel centres and between them.
    cudaArray_t arr1;
    CHECK(cudaMallocArray(&arr1, &fdesc, W, 0));
    CHECK(cudaMemcpy2DToArray(arr1, 0, 0, data, W * sizeof(float), W * sizeof(float), 1, cudaMemcpyHostToDevice));
    cudaResourceDesc res1 = {};
    res1.resType = cudaResourceTypeArray;
    res1.res.array.array = arr1;
    cudaTextureObject_t t1 = make(res1, cudaAddressModeClamp, cudaFilterModeLinear, false, cudaReadModeElementType);
    const float xs[4] = {0.5f, 1.0f, 3.5f, 9.0f};
    float *d_xs;
    CHECK(cudaMalloc((void **)&d_xs, sizeof xs));
    CHECK(cudaMemcpy(d_xs, xs, sizeof xs, cudaMemcpyHostToDevice));
    sample1d<<<1, 4>>>(t1, d_xs, d_out, 4);
    CHECK_LAUNCH();
    float o1[4];
    CHECK(cudaMemcpy(o1, d_out, sizeof o1, cudaMemcpyDeviceToHost));
    const float w1[4] = {data[0], (data[0] + data[1]) / 2, data[3], data[7]};
    for (int i = 0; i < 4; ++i)
        if (fabsf(o1[i] - w1[i]) > 1e-4f) fail("1-D array at %g: expected %g got %g", xs[i], w1[i], o1[i]);

    printf("checked %d samples\n", checked);
    CHECK(cudaDestroyTextureObject(ct));
    CHECK(cudaDestroyTextureObject(lt));
    CHECK(cudaDestroyTextureObject(pt));
    CHECK(cudaDestroyTextureObject(t1));
    CHECK(cudaFreeArray(arr));
    CHECK(cudaFreeArray(carr));
    CHECK(cudaFreeArray(arr1));
    CHECK(cudaFree(pitched));
    CHECK(cudaFree(d_at));
    CHECK(cudaFree(d_out));
    CHECK(cudaFree(d4));
    CHECK(cudaFree(d_lin));
    CHECK(cudaFree(d_iout));
    CHECK(cudaFree(d_xs));
    return finish();
}
