// Functions that host (C++) and device (CUDA) code both call.
#pragma once

#if defined(__CUDACC__)
#define IVF_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define IVF_HOST_DEVICE inline
#endif
