// Surfaces and 3-D textures: a 2-D int array written and read in kernels through a
// surface object (surf2Dwrite/surf2Dread, with out-of-range accesses clamped or
// dropped as asked), read back with cudaMemcpy2DFromArray; a 3-D float array filled
// with cudaMemcpy3D and sampled by tex3D with trilinear filtering against a CPU
// reference.
#define TEST_NAME "surfaces"
#include "check.cuh"

static const int W = 16, H = 6;

__global__ void write_surface(cudaSurfaceObject_t s) {
    const int x = threadIdx.x, y = blockIdx.x;
    surf2Dwrite(100 * y + x, s, x * (int)sizeof(int), y);
    // Past the right edge: dropped, not written anywhere.
    surf2Dwrite(-1, s, (W + x) * (int)sizeof(int), y, cudaBoundaryModeZero);
}

__global__ void bump_surface(cudaSurfaceObject_t s, int *edge) {
    const int x = threadIdx.x, y = blockIdx.x;
    const int v = surf2Dread<int>(s, x * (int)sizeof(int), y);
    surf2Dwrite(v + 1, s, x * (int)sizeof(int), y);
    if (x == 0 && y == 0) {
        edge[0] = surf2Dread<int>(s, -8 * (int)sizeof(int), 0, cudaBoundaryModeClamp);
        edge[1] = surf2Dread<int>(s, (W + 3) * (int)sizeof(int), 0, cudaBoundaryModeZero);
    }
}

static const int X = 5, Y = 4, Z = 3;

__global__ void sample3d(cudaTextureObject_t t, const float4 *at, float *out, int n) {
    const int i = threadIdx.x;
    if (i < n) out[i] = tex3D<float>(t, at[i].x, at[i].y, at[i].z);
}

static float v3(const float *d, int x, int y, int z) {
    x = x < 0 ? 0 : (x >= X ? X - 1 : x);
    y = y < 0 ? 0 : (y >= Y ? Y - 1 : y);
    z = z < 0 ? 0 : (z >= Z ? Z - 1 : z);
    return d[(z * Y + y) * X + x];
}

static float trilinear(const float *d, float x, float y, float z) {
    const float xb = x - 0.5f, yb = y - 0.5f, zb = z - 0.5f;
    const int x0 = (int)floorf(xb), y0 = (int)floorf(yb), z0 = (int)floorf(zb);
    const float a = roundf((xb - x0) * 256) / 256, b = roundf((yb - y0) * 256) / 256, c = roundf((zb - z0) * 256) / 256;
    float acc = 0;
    for (int k = 0; k < 8; ++k) {
        const int dx = k & 1, dy = (k >> 1) & 1, dz = (k >> 2) & 1;
        const float w = (dx ? a : 1 - a) * (dy ? b : 1 - b) * (dz ? c : 1 - c);
        acc += w * v3(d, x0 + dx, y0 + dy, z0 + dz);
    }
    return acc;
}

int main() {
    cudaChannelFormatDesc idesc = cudaCreateChannelDesc<int>();
    cudaArray_t arr;
    CHECK(cudaMallocArray(&arr, &idesc, W, H, cudaArraySurfaceLoadStore));
    cudaResourceDesc res = {};
    res.resType = cudaResourceTypeArray;
    res.res.array.array = arr;
    cudaSurfaceObject_t s;
    CHECK(cudaCreateSurfaceObject(&s, &res));
    int *d_edge;
    CHECK(cudaMalloc((void **)&d_edge, 2 * sizeof(int)));
    write_surface<<<H, W>>>(s);
    CHECK_LAUNCH();
    bump_surface<<<H, W>>>(s, d_edge);
    CHECK_LAUNCH();
    int out[W * H];
    CHECK(cudaMemcpy2DFromArray(out, W * sizeof(int), arr, 0, 0, W * sizeof(int), H, cudaMemcpyDeviceToHost));
    for (int y = 0; y < H; ++y)
        for (int x = 0; x < W; ++x)
            if (out[y * W + x] != 100 * y + x + 1) {
                fail("surface (%d, %d): expected %d got %d", x, y, 100 * y + x + 1, out[y * W + x]);
                y = H;
                break;
            }
    int edge[2];
    CHECK(cudaMemcpy(edge, d_edge, sizeof edge, cudaMemcpyDeviceToHost));
    // Clamped to x = 0 (read before or after the bump, both 1 apart: either is right).
    if (edge[0] != 0 && edge[0] != 1) fail("clamped surface read got %d", edge[0]);
    if (edge[1] != 0) fail("a surface read past the edge in zero mode got %d", edge[1]);
    CHECK(cudaDestroySurfaceObject(s));

    // A 3-D array, trilinear.
    float vol[X * Y * Z];
    for (int i = 0; i < X * Y * Z; ++i) vol[i] = (float)((i * 13) % 17) * 0.5f;
    cudaChannelFormatDesc fdesc = cudaCreateChannelDesc<float>();
    cudaArray_t arr3;
    CHECK(cudaMalloc3DArray(&arr3, &fdesc, make_cudaExtent(X, Y, Z)));
    cudaMemcpy3DParms p = {};
    p.srcPtr = make_cudaPitchedPtr(vol, X * sizeof(float), X, Y);
    p.dstArray = arr3;
    p.extent = make_cudaExtent(X, Y, Z);
    p.kind = cudaMemcpyHostToDevice;
    CHECK(cudaMemcpy3D(&p));
    cudaResourceDesc r3 = {};
    r3.resType = cudaResourceTypeArray;
    r3.res.array.array = arr3;
    cudaTextureDesc td = {};
    td.addressMode[0] = td.addressMode[1] = td.addressMode[2] = cudaAddressModeClamp;
    td.filterMode = cudaFilterModeLinear;
    td.readMode = cudaReadModeElementType;
    cudaTextureObject_t t3;
    CHECK(cudaCreateTextureObject(&t3, &r3, &td, nullptr));
    const int n = 32;
    float4 at[n];
    for (int i = 0; i < n; ++i) at[i] = make_float4(-0.7f + 0.23f * i, 4.3f - 0.17f * i, 0.1f * i, 0);
    float4 *d_at;
    float *d_out;
    CHECK(cudaMalloc((void **)&d_at, sizeof at));
    CHECK(cudaMalloc((void **)&d_out, n * sizeof(float)));
    CHECK(cudaMemcpy(d_at, at, sizeof at, cudaMemcpyHostToDevice));
    sample3d<<<1, n>>>(t3, d_at, d_out, n);
    CHECK_LAUNCH();
    float got[n];
    CHECK(cudaMemcpy(got, d_out, sizeof got, cudaMemcpyDeviceToHost));
    for (int i = 0; i < n; ++i) {
        const float want = trilinear(vol, at[i].x, at[i].y, at[i].z);
        if (fabsf(got[i] - want) > 1e-3f * (1 + fabsf(want))) {
            fail("tex3D at (%g, %g, %g): expected %g got %g", at[i].x, at[i].y, at[i].z, want, got[i]);
            break;
        }
    }
    CHECK(cudaDestroyTextureObject(t3));
    CHECK(cudaFreeArray(arr));
    CHECK(cudaFreeArray(arr3));
    CHECK(cudaFree(d_edge));
    CHECK(cudaFree(d_at));
    CHECK(cudaFree(d_out));
    return finish();
}
