// Calls through function pointers and virtual functions on the device: a table of
// function pointers in a __device__ variable, a pointer chosen in code, objects of two
// classes made with device-side new and used through their base class (vtables, virtual
// destructors), a virtual function that calls another through a pointer; every result
// against the host's.
#define TEST_NAME "virtual_calls"
#include "check.cuh"

typedef float (*unary)(float);
__device__ float twice(float x) { return 2.0f * x; }
__device__ float thrice(float x) { return 3.0f * x; }
__device__ float plus_one(float x) { return x + 1.0f; }
__device__ unary table[3] = {twice, thrice, plus_one};

struct Shape {
    __device__ virtual float area() const = 0;
    __device__ virtual float scaled(unary f) const { return f(area()); }
    __device__ virtual ~Shape() {}
};
struct Square : Shape {
    float s;
    __device__ explicit Square(float s) : s(s) {}
    __device__ float area() const override { return s * s; }
};
struct Circle : Shape {
    float r;
    __device__ explicit Circle(float r) : r(r) {}
    __device__ float area() const override { return 3.0f * r * r; }
    __device__ float scaled(unary f) const override { return f(area()) - 1.0f; }
};

__global__ void run(float *out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    Shape *s = (i % 2) ? static_cast<Shape *>(new Square((float)i)) : static_cast<Shape *>(new Circle((float)i));
    unary chosen = (i % 3 == 0) ? twice : plus_one;
    out[3 * i] = s->area() + table[i % 3]((float)i);
    out[3 * i + 1] = s->scaled(table[(i + 1) % 3]);
    out[3 * i + 2] = chosen((float)i);
    delete s;
}

static float host_table(int k, float x) { return k == 0 ? 2 * x : (k == 1 ? 3 * x : x + 1); }

int main() {
    const int n = 96;
    float *d;
    CHECK(cudaMalloc((void **)&d, 3 * n * sizeof(float)));
    run<<<3, 32>>>(d, n);
    CHECK_LAUNCH();
    float h[3 * n];
    CHECK(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
    for (int i = 0; i < n; ++i) {
        const float x = (float)i;
        const float area = (i % 2) ? x * x : 3 * x * x;
        const float want[3] = {
            area + host_table(i % 3, x),
            host_table((i + 1) % 3, area) - ((i % 2) ? 0.0f : 1.0f),
            (i % 3 == 0) ? 2 * x : x + 1,
        };
        for (int k = 0; k < 3; ++k)
            if (h[3 * i + k] != want[k]) {
                fail("thread %d result %d: expected %g got %g", i, k, want[k], h[3 * i + k]);
                i = n;
                break;
            }
    }
    CHECK(cudaFree(d));
    return finish();
}
