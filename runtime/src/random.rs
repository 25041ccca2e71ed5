//! Seeded random inputs for numeric checks: the same seed gives the same
//! tensors on every machine, so a failing check can be replayed.

use crate::host::{Data, HostTensor};
use qforge_ir::DataType;

/// SplitMix64, enough for test inputs and independent of any crate's
/// stream stability.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub(crate) fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// One random tensor per input: floats uniform in [0, 1) (the range of
/// normalised images), integers in [0, 10), bools fair.
pub fn random_inputs(inputs: &[(String, Vec<usize>, DataType)], seed: u64) -> Vec<HostTensor> {
    let mut rng = Rng::new(seed);
    inputs
        .iter()
        .map(|(_, shape, dt)| {
            let n: usize = shape.iter().product();
            let data = match dt {
                DataType::I64 => Data::I64((0..n).map(|_| (rng.uniform() * 10.0) as i64).collect()),
                DataType::I32 => Data::I32((0..n).map(|_| (rng.uniform() * 10.0) as i32).collect()),
                DataType::Bool => Data::Bool((0..n).map(|_| rng.uniform() < 0.5).collect()),
                DataType::U8 => Data::U8((0..n).map(|_| (rng.uniform() * 255.0) as u8).collect()),
                DataType::F16 => Data::F16((0..n).map(|_| half::f16::from_f32(rng.uniform())).collect()),
                _ => Data::F32((0..n).map(|_| rng.uniform()).collect()),
            };
            HostTensor { shape: shape.clone(), data }
        })
        .collect()
}
