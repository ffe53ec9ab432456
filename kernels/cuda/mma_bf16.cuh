// Device primitives shared by the tensor-core linear-attention kernels (gla_chunked.cu,
// gla_chunked_bwd.cu, gated_delta_fast*.cu): exp2, bf16 pair packing, bf16 mma.sync m16n8k16
// with fp32 accumulators, and ldmatrix loads from shared memory.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace hyb::kernels::cuda {

__device__ __forceinline__ float Exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  const __nv_bfloat162 p = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo
  return *reinterpret_cast<const uint32_t*>(&p);
}

__device__ __forceinline__ float2 UnpackBf16(uint32_t x) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&x));
}

// D += A (16x16, row-major) * B (16x8, column-major); bf16 inputs, fp32 accumulators.
__device__ __forceinline__ void Mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                    uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8x8 bf16 matrices from shared memory, each lane giving one row's address.
__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], const void* row_ptr) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(row_ptr));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// The same, transposed: the B fragments of two n8 tiles of a row-major [k][n] tile.
__device__ __forceinline__ void LdMatrixX4Trans(uint32_t (&r)[4], const void* row_ptr) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(row_ptr));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// Stores four 8x8 bf16 matrices, transposed, to shared memory (sm_90): r[i] holds this lane's
// pair of matrix i in the accumulator layout (row lane / 4, columns 2 (lane % 4) + {0, 1}); lane
// l gives the address of the stored row l % 8 (= column l % 8 of the matrix) of matrix l / 8.
__device__ __forceinline__ void StMatrixX4Trans(void* row_ptr, const uint32_t (&r)[4]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(row_ptr));
  asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1,%2,%3,%4};\n" ::"r"(addr),
               "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3])
               : "memory");
#else
  __trap();  // callers take this path on sm_90 only
#endif
}

// ldmatrix fragment loaders for mma.sync m16n8k16 (gated_delta_fast*.cu, gla_chunked.cu); in
// their own namespace because gla_chunked_bwd.cu keeps 32-bit-load loaders of the same names.
namespace frag {

// Fragment loaders; pitches in elements, every row start 16-byte aligned.
// A (16x16) at rows m0.., columns k0.. of a row-major [m][k] tile.
__device__ __forceinline__ void LoadA(uint32_t (&a)[4], const __nv_bfloat16* base, int pitch,
                                      int m0, int k0, int lane) {
  const int mat = lane >> 3, r = lane & 7;
  LdMatrixX4(a, base + (m0 + r + 8 * (mat & 1)) * pitch + k0 + 8 * (mat >> 1));
}
// A (16x16) = the transpose of a row-major [k][m] tile: A[m][k] = base[k][m], rows m0.., k0...
__device__ __forceinline__ void LoadAT(uint32_t (&a)[4], const __nv_bfloat16* base, int pitch,
                                       int m0, int k0, int lane) {
  const int mat = lane >> 3, r = lane & 7;
  LdMatrixX4Trans(a, base + (k0 + r + 8 * (mat >> 1)) * pitch + m0 + 8 * (mat & 1));
}
// B fragments of two n8 tiles (n0.., n0 + 8..) at rows k0.. of a row-major [k][n] tile:
// (b[0], b[1]) and (b[2], b[3]).
__device__ __forceinline__ void LoadB2(uint32_t (&b)[4], const __nv_bfloat16* base, int pitch,
                                       int k0, int n0, int lane) {
  const int mat = lane >> 3, r = lane & 7;
  LdMatrixX4Trans(b, base + (k0 + r + 8 * (mat & 1)) * pitch + n0 + 8 * (mat >> 1));
}
// The same two n8 tiles of B when B is stored transposed, row-major [n][k]: B[k][n] = base[n][k].
__device__ __forceinline__ void LoadBT2(uint32_t (&b)[4], const __nv_bfloat16* base, int pitch,
                                        int k0, int n0, int lane) {
  const int mat = lane >> 3, r = lane & 7;
  LdMatrixX4(b, base + (n0 + r + 8 * (mat >> 1)) * pitch + k0 + 8 * (mat & 1));
}

}  // namespace frag

}  // namespace hyb::kernels::cuda
