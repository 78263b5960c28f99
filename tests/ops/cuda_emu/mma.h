// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}: one warp's product from the operand layout of
// the PTX ISA ("Matrix Fragments for mma.m16n8k16 with floating point type"), computed in fp32.
template <typename T> struct Mma {
  static inline float half_of(unsigned r, int hi) {
    const unsigned short bits = hi ? (unsigned short)(r >> 16) : (unsigned short)(r & 0xffffu);
    T v;
    memcpy(&v, &bits, 2);
    return to_f<T>(v);
  }
  static inline void run(float (&c)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0,
                         unsigned b1) {
    BlockCtl& B = g_blocks[blockIdx.x];
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    uint32_t* mine = B.xch[w][lane];
    mine[0] = a0; mine[1] = a1; mine[2] = a2; mine[3] = a3; mine[4] = b0; mine[5] = b1;
    warp_barrier();
    float A[16][16], Bm[16][8];
    for (int l = 0; l < 32; ++l) {  // lane l: group g = l / 4, thread t = l % 4
      const int g = l >> 2, t = l & 3;
      const uint32_t* r = B.xch[w][l];
      for (int e = 0; e < 2; ++e) {
        A[g][2 * t + e] = half_of(r[0], e);          // a0, a1: row g, columns 2t..
        A[g + 8][2 * t + e] = half_of(r[1], e);      // a2, a3: row g + 8
        A[g][2 * t + 8 + e] = half_of(r[2], e);      // a4, a5: row g, columns 2t + 8..
        A[g + 8][2 * t + 8 + e] = half_of(r[3], e);  // a6, a7
        Bm[2 * t + e][g] = half_of(r[4], e);         // b0, b1: rows 2t.., column g
        Bm[2 * t + 8 + e][g] = half_of(r[5], e);     // b2, b3: rows 2t + 8..
      }
    }
    warp_barrier();
    const int g = lane >> 2, t = lane & 3;
    const int rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
    for (int i = 0; i < 4; ++i) {  // c0, c1: row g, columns 2t, 2t + 1; c2, c3: row g + 8
      float s = c[i];
      for (int k = 0; k < 16; ++k) s += A[rows[i]][k] * Bm[k][cols[i]];
      c[i] = s;
    }
  }
};
