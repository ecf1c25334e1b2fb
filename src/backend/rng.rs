//! The engine's random numbers: one seedable, version-stable generator, so a seed gives the
//! same samples, shuffles and initial weights on every device and in every build.

/// A small, seedable, version-stable generator (SplitMix64 seeding, xorshift64* stream):
/// a given seed gives the same tokens in every build of the engine.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

/// One SplitMix64 step: spreads nearby seeds (0, 1, 2, ...) over the whole state space.
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng {
            state: splitmix64(seed) | 1,
        }
    }

    /// The stream for one (seed, a, b) triple, e.g. (run seed, prompt, sample): independent
    /// of which other sequences share its batch.
    pub fn for_stream(seed: u64, a: u64, b: u64) -> Self {
        Rng::new(splitmix64(splitmix64(seed ^ splitmix64(a)) ^ b))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}
