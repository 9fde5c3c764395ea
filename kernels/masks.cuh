// Supplied masks (src/masks.rs, `SuppliedMasks`; uploaded per call by
// src/backend/cuda/driver/masks.rs): a mask kernel of dropout.cu or zoneout.cu given a non-null
// `hits` reads its hits from these bits instead of drawing them with Philox.
//
// One site's bits are `[steps, batch, words]` u32 words, `words = ceil(W / 32)`: bit u % 32 of
// word u / 32 of row (s, b) is the hit of unit u of sequence b at the site's step s. For the
// per-step kinds (dropout between layers, zoneout) s is the sequence's step minus `hits_step0`
// (the first step of the call, so a call uploads only its own steps); for the per-sequence kinds
// (recurrent and input dropout) there is one step. A hit means dropped (dropout) or kept at the
// previous value (zoneout), as a drawn word below the bound does.
#pragma once

// The hit of unit u in row `row` (= s·batch + b) of the bits `hits` of `words` words per row.
__device__ __forceinline__ bool rnnk_supplied_hit(const unsigned int* __restrict__ hits, long long row, int words, long long u) {
    return (hits[row * words + (u >> 5)] >> (u & 31)) & 1u;
}
