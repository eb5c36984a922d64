/* A 2-D grid of 2-D blocks: a matrix transpose through a __shared__ tile (with a
 * padded row against bank conflicts), sizes not multiples of the tile. */
#define TEST_NAME "grid2d"
#include <hip/hip_runtime.h>
#include "check.h"

#define TILE 16

__global__ void transpose(const float* in, float* out, int rows, int cols) {
    __shared__ float tile[TILE][TILE + 1];
    int x = blockIdx.x * TILE + threadIdx.x, y = blockIdx.y * TILE + threadIdx.y;
    if (x < cols && y < rows) tile[threadIdx.y][threadIdx.x] = in[y * cols + x];
    __syncthreads();
    x = blockIdx.y * TILE + threadIdx.x;
    y = blockIdx.x * TILE + threadIdx.y;
    if (x < rows && y < cols) out[y * rows + x] = tile[threadIdx.x][threadIdx.y];
}

int main(void) {
    const int rows = 100, cols = 70;
    static float in[rows * cols], out[rows * cols];
    for (int i = 0; i < rows * cols; ++i) in[i] = i * 0.5f;
    float *din, *dout;
    CHECK(hipMalloc((void**)&din, sizeof in));
    CHECK(hipMalloc((void**)&dout, sizeof out));
    CHECK(hipMemcpy(din, in, sizeof in, hipMemcpyHostToDevice));
    dim3 block(TILE, TILE), grid((cols + TILE - 1) / TILE, (rows + TILE - 1) / TILE);
    transpose<<<grid, block>>>(din, dout, rows, cols);
    CHECK(hipGetLastError());
    CHECK(hipMemcpy(out, dout, sizeof out, hipMemcpyDeviceToHost));
    int bad = 0;
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols; ++c)
            if (out[c * rows + r] != in[r * cols + c] && bad++ < 5)
                EXPECT(0, "out[%d][%d] = %g, want %g", c, r, out[c * rows + r], in[r * cols + c]);
    CHECK(hipFree(din));
    CHECK(hipFree(dout));
    if (failures) return 1;
    printf("ok grid2d: %dx%d transposed by a %ux%u grid of %dx%d blocks\n", rows, cols, grid.x, grid.y, TILE, TILE);
    return 0;
}
