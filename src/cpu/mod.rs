//! CPU kernels. Each has a scalar reference; SIMD variants are picked at run time.
//! STUB: interface only.
