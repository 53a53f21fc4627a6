// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011).
//
// A counter-based generator: the output is a pure function of (counter, key), so the CPU kernel,
// the CUDA kernel, the Triton kernel and the PyTorch reference all draw the same numbers for the
// same seed without sharing any state. Used by host and device code alike.
#pragma once

#include <cstdint>

#include "host_device.h"

namespace internvideo_fast {

struct Philox4x32 {
  uint32_t x[4];
};

IVF_HOST_DEVICE void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t product = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(product >> 32);
  lo = static_cast<uint32_t>(product);
}

// 10 rounds, the key bumped between rounds (Random123's philox4x32_R with R = 10).
IVF_HOST_DEVICE Philox4x32 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                         uint32_t k0, uint32_t k1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += kWeyl0;
      k1 += kWeyl1;
    }
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(kMul0, c0, hi0, lo0);
    mulhilo32(kMul1, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
  }
  return Philox4x32{{c0, c1, c2, c3}};
}

// The tube mask's sort key of spatial position `position` in sample `sample`: 63 random bits, so
// it fits a signed int64 in every implementation (the PyTorch reference has no uint64 sort).
IVF_HOST_DEVICE int64_t tube_mask_key(uint64_t seed, uint32_t sample, uint32_t position) {
  const Philox4x32 r = philox4x32_10(position, sample, 0u, 0u, static_cast<uint32_t>(seed),
                                     static_cast<uint32_t>(seed >> 32));
  return static_cast<int64_t>((static_cast<uint64_t>(r.x[0] >> 1) << 32) | r.x[1]);
}

}  // namespace internvideo_fast
