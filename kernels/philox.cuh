// Philox 4x32-10 (Salmon, Moraes, Dror and Shaw, SC 2011), the counter-based generator of the
// regularisation masks: the same function as src/philox.rs (checked there against Random123's
// known answers, and here against it bit for bit on the host emulation), so a mask drawn on the
// device is the host's. The layout of the masks' counters is src/masks.rs's.
#pragma once

// c = Philox 4x32-10 of the counter c under the key (k0, k1), in place.
__device__ __forceinline__ void rnnk_philox4x32_10(unsigned int c[4], unsigned int k0, unsigned int k1) {
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        const unsigned long long p0 = (unsigned long long)0xD2511F53u * c[0];
        const unsigned long long p1 = (unsigned long long)0xCD9E8D57u * c[2];
        const unsigned int n0 = (unsigned int)(p1 >> 32) ^ c[1] ^ k0;
        const unsigned int n2 = (unsigned int)(p0 >> 32) ^ c[3] ^ k1;
        c[0] = n0;
        c[1] = (unsigned int)p1;
        c[2] = n2;
        c[3] = (unsigned int)p0;
    }
}
