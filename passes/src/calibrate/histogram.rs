//! Streaming histograms of |x| and the four amax methods of INT8 calibration.
//!
//! # Why a streaming histogram
//!
//! Calibration sees every activation of every calibration image: tens of
//! millions of floats per tensor. Storing them would make memory grow with
//! the calibration set; a [`Histogram`] keeps only a fixed set of bins per
//! tensor (2048 `f64` by default, 16 KiB), so memory stays flat however many
//! images are run, and each batch is folded in and dropped.
//!
//! # NVIDIA compatibility
//!
//! Bins and methods follow NVIDIA's pytorch-quantization `HistogramCalibrator`
//! (its default `torch_hist` path) so that an amax computed here is the one a
//! TensorRT user gets from that tool for the same data:
//!
//! - the first non-empty batch fixes the range `[0, max|x|]` split into
//!   `num_bins` equal bins; a later batch with a larger max appends bins of
//!   the *same* width until it is covered (`ceil(max / width)` bins), so
//!   widths never change and earlier counts never move;
//! - bin `k` is `[k·w, (k+1)·w)`, the last bin is closed (the max goes there);
//! - [`Method::Percentile`], [`Method::Mse`] and [`Method::Entropy`]
//!   reproduce `_compute_amax_percentile`, `_compute_amax_mse` and
//!   `_compute_amax_entropy` (TensorRT's KL search: 128 levels, candidates from
//!   bin 128); [`compute_amax`] documents each convention exactly.
//!
//! Deliberate differences (only the percentile one changes results on
//! ordinary data, and there NVIDIA's answer is a rounding artifact):
//!
//! - the exact max |x| is kept besides the bins ([`Method::Max`] returns it,
//!   not a bin edge); NaN and ±Inf are counted apart and never binned;
//! - a batch that is all zeros before any non-zero value (NVIDIA would build
//!   zero-width bins) is only counted; the range waits for the first non-zero
//!   max and the deferred zeros then go into bin 0;
//! - growth beyond [`MAX_BINS`] bins (a range that grew 32× after the first
//!   batch, where NVIDIA would allocate without bound) doubles the width,
//!   merging pairs of bins exactly, until the bins fit;
//! - the percentile's cdf test has a 1e-12 relative tolerance (see
//!   [`compute_amax`]): numpy's `cumsum(hist / total)` can miss the bin that
//!   holds exactly p % of the values when `p / 100 · total` is a whole count;
//! - where NVIDIA fails or returns NaN (MSE / entropy with too few bins, an
//!   all-zero `Q`), the max or `+∞` KL is used instead, as documented there;
//! - counts are `f64` (so [`Histogram::merge`] can split a bin between two
//!   targets; NVIDIA truncates its float counts to int) and the searches run in
//!   `f64` where NVIDIA's MSE runs in `f32` and scipy sums pairwise, so a
//!   near-tie between two candidates may resolve differently.

/// Default number of bins (NVIDIA's and TensorRT's 2048).
pub const DEFAULT_NUM_BINS: usize = 2048;

/// Default percentile of [`Method::Percentile`] (NVIDIA's 99.99).
pub const DEFAULT_PERCENTILE: f64 = 99.99;

/// First candidate bin of the MSE and entropy searches (NVIDIA's `start_bin`).
pub const START_BIN: usize = 128;

/// Upper bound on the number of bins (512 KiB of counts): see the module doc.
pub const MAX_BINS: usize = 1 << 16;

/// Quantized levels of one sign of signed INT8 (`2^(8-1)`), the KL target.
const LEVELS: usize = 128;

/// Largest quantized magnitude of symmetric INT8.
const QMAX: f64 = 127.0;

/// A growing histogram of |x| with the exact max and non-finite counts.
///
/// Bin `k` covers `[k·w, (k+1)·w)` with `w` = [`Histogram::bin_width`]; values
/// at or past the upper edge of the last bin land in the last bin (that is,
/// the last bin when they are added: the first batch's max stays in bin
/// `num_bins - 1` after the range grows, as in NVIDIA's).
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Bins created by the first non-zero batch.
    initial_bins: usize,
    /// Counts per bin; empty until the range is known.
    counts: Vec<f64>,
    /// Bin width (0 until the range is known).
    width: f64,
    /// `1 / width`, precomputed for binning.
    inv_width: f64,
    /// Exact max |x| over finite values.
    max_abs: f32,
    /// Zeros seen before the range was known.
    pending_zeros: f64,
    /// Finite values seen (binned or pending).
    total: f64,
    /// NaNs seen.
    nan: u64,
    /// +Inf and -Inf seen.
    inf: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new(DEFAULT_NUM_BINS)
    }
}

impl Histogram {
    /// An empty histogram whose first non-zero batch is split into `num_bins`
    /// bins (clamped to `1..=MAX_BINS`).
    pub fn new(num_bins: usize) -> Self {
        Self {
            initial_bins: num_bins.clamp(1, MAX_BINS),
            counts: Vec::new(),
            width: 0.0,
            inv_width: 0.0,
            max_abs: 0.0,
            pending_zeros: 0.0,
            total: 0.0,
            nan: 0,
            inf: 0,
        }
    }

    /// Folds a batch in. A batch inside the known range with only finite
    /// values takes one pass; the first batch, a batch that grows the range
    /// and one with NaN/Inf take more (a scan for the max and the non-finite
    /// values, then the binning).
    pub fn add(&mut self, xs: &[f32]) {
        // Once the range is known, a batch usually fits in it and has no
        // NaN/Inf: then one pass does everything (memory traffic, not
        // arithmetic, is what binning tens of millions of values costs).
        if !self.counts.is_empty() && self.add_within_range(xs) {
            return;
        }
        let (max_bits, non_finite) = scan(xs);
        if non_finite > 0 {
            for x in xs {
                if x.is_nan() {
                    self.nan += 1;
                } else if x.is_infinite() {
                    self.inf += 1;
                }
            }
        }
        let finite = xs.len() - non_finite;
        if finite == 0 {
            return;
        }
        let batch_max = f32::from_bits(max_bits);
        self.max_abs = self.max_abs.max(batch_max);
        self.total += finite as f64;
        if self.counts.is_empty() {
            if batch_max == 0.0 {
                self.pending_zeros += finite as f64;
                return;
            }
            self.width = f64::from(batch_max) / self.initial_bins as f64;
            self.inv_width = self.initial_bins as f64 / f64::from(batch_max);
            self.counts = vec![0.0; self.initial_bins];
            self.counts[0] = std::mem::take(&mut self.pending_zeros);
        } else {
            self.grow_to_cover(f64::from(batch_max));
        }
        bin_into(&mut self.counts, self.inv_width, xs, non_finite == 0);
    }

    /// Combines `other` into `self`, e.g. to give tensors that must share a
    /// scale (Concat inputs) one histogram.
    ///
    /// The result has the larger of the two widths and enough bins for both
    /// maxima (and at least as many as the histogram whose width it keeps);
    /// each source bin's count is split over the target bins it overlaps in
    /// proportion to the overlap (a histogram that already has the target
    /// width is copied unchanged). Max, totals and NaN/Inf counts combine.
    pub fn merge(&mut self, other: &Histogram) {
        self.nan += other.nan;
        self.inf += other.inf;
        self.total += other.total;
        self.max_abs = self.max_abs.max(other.max_abs);
        if other.counts.is_empty() {
            match self.counts.first_mut() {
                Some(bin0) => *bin0 += other.pending_zeros,
                None => self.pending_zeros += other.pending_zeros,
            }
            return;
        }
        if self.counts.is_empty() {
            let zeros = std::mem::take(&mut self.pending_zeros);
            self.counts.clone_from(&other.counts);
            self.counts[0] += zeros;
            self.width = other.width;
            self.inv_width = other.inv_width;
            return;
        }
        let (width, inv_width) =
            if other.width > self.width { (other.width, other.inv_width) } else { (self.width, self.inv_width) };
        let mut n = bins_to_cover(f64::from(self.max_abs), inv_width);
        for h in [&*self, other] {
            if h.width == width {
                n = n.max(h.counts.len());
            }
        }
        let mut target = vec![0.0; n.min(MAX_BINS)];
        rebin_into(&self.counts, self.width, &mut target, width, inv_width);
        rebin_into(&other.counts, other.width, &mut target, width, inv_width);
        self.counts = target;
        self.width = width;
        self.inv_width = inv_width;
    }

    /// Exact max |x| over the finite values seen (0 when none).
    pub fn max_abs(&self) -> f32 {
        self.max_abs
    }

    /// Counts per bin (empty while no non-zero finite value was seen).
    pub fn counts(&self) -> &[f64] {
        &self.counts
    }

    /// Bin width, or `None` while no non-zero finite value was seen.
    pub fn bin_width(&self) -> Option<f64> {
        (!self.counts.is_empty()).then_some(self.width)
    }

    /// Lower edge of bin `k` (`k · width`; `bin_edge(num_bins)` is the upper
    /// edge of the last bin). 0 while the range is unknown.
    pub fn bin_edge(&self, k: usize) -> f64 {
        k as f64 * self.width
    }

    /// Number of finite values seen, zeros waiting for a range included.
    pub fn total(&self) -> f64 {
        self.total
    }

    /// Number of NaN values seen (never binned).
    pub fn nan_count(&self) -> u64 {
        self.nan
    }

    /// Number of +Inf and -Inf values seen (never binned).
    pub fn inf_count(&self) -> u64 {
        self.inf
    }

    /// True when no finite value was seen.
    pub fn is_empty(&self) -> bool {
        self.total == 0.0
    }

    /// [`Histogram::add`] for a batch of finite values that the bins as
    /// they are cover; returns false, having changed nothing, for any other
    /// batch (or before the first batch has set the bin width).
    ///
    /// Such a batch can be added out of turn: it only adds one to existing
    /// bins, and counts, totals and maxima add up the same in any order. A
    /// later batch that widens the bins merges whole bins (`k >> shift`,
    /// the width doubled exactly), which is where its values would have
    /// landed at the wider bins, and a batch that fits now fits later too.
    pub fn add_if_covered(&mut self, xs: &[f32]) -> bool {
        !self.counts.is_empty() && self.add_within_range(xs)
    }

    /// One-pass [`Histogram::add`] for a batch of finite values that the
    /// current bins cover; returns false, having changed nothing, for any
    /// other batch. The result is the two-pass one's exactly: the same bins
    /// in the same order, only counted into scratch lanes that are kept
    /// when the batch turns out to qualify.
    fn add_within_range(&mut self, xs: &[f32]) -> bool {
        let n = self.counts.len();
        let inv_width = self.inv_width;
        with_lanes(n, |lanes| {
            let (max_bits, non_finite) = scan_and_bin(lanes, n, inv_width, xs);
            let batch_max = f32::from_bits(max_bits);
            if non_finite > 0 || bins_to_cover(f64::from(batch_max), inv_width) > n {
                return (false, n);
            }
            self.max_abs = self.max_abs.max(batch_max);
            self.total += xs.len() as f64;
            let used = touched(batch_max, inv_width, n);
            sum_lanes(&mut self.counts, lanes, used);
            (true, used)
        })
    }

    /// Appends bins of the current width until `value` is covered.
    fn grow_to_cover(&mut self, value: f64) {
        let mut needed = bins_to_cover(value, self.inv_width);
        if needed <= self.counts.len() {
            return;
        }
        if needed > MAX_BINS {
            // Double the width (exact in binary) until everything fits.
            let mut shift = 1;
            while needed.div_ceil(1usize << shift) > MAX_BINS && shift < 62 {
                shift += 1;
            }
            let mut coarse = vec![0.0; self.counts.len().div_ceil(1usize << shift)];
            for (k, &c) in self.counts.iter().enumerate() {
                coarse[k >> shift] += c;
            }
            self.counts = coarse;
            let factor = 2f64.powi(shift);
            self.width *= factor;
            self.inv_width /= factor;
            needed = bins_to_cover(value, self.inv_width).min(MAX_BINS);
        }
        self.counts.resize(needed.max(self.counts.len()), 0.0);
    }
}

/// Max of the finite |x| as bits (non-negative floats order like their bits)
/// and the number of non-finite values; branch-free so it vectorizes.
fn scan(xs: &[f32]) -> (u32, usize) {
    const INF_BITS: u32 = 0x7f80_0000;
    let mut max_bits = 0u32;
    let mut non_finite = 0usize;
    for x in xs {
        let bits = x.to_bits() & 0x7fff_ffff;
        let finite = bits < INF_BITS;
        max_bits = max_bits.max(if finite { bits } else { 0 });
        non_finite += usize::from(!finite);
    }
    (max_bits, non_finite)
}

/// Interleaved sub-histograms of the binning loops: activations pile up in
/// a few bins (ReLU/SiLU zeros), so consecutive increments often hit the
/// same counter and wait on each other; four integer copies break that
/// chain and are summed in at the end.
const LANES: usize = 4;

/// Values binned per block: bin indices are computed for a whole block
/// first (a loop the compiler vectorizes), then counted.
const BLOCK: usize = 64;

/// The bin of |x| (`floor(|x| / w)`) clamped to `last`; NaN lands in `last`
/// (`f64::min` returns the other operand), and callers count it apart.
#[inline(always)]
fn bin_of(x: f32, inv_width: f64, last: f64) -> u32 {
    let b = (f64::from(x.abs()) * inv_width).min(last);
    // In range: `b` is in `0..=last` and `last < MAX_BINS` fits in u32.
    b as u32
}

/// Adds one to the bin of every finite |x| (bin = floor(|x| / w), clamped).
fn bin_into(counts: &mut [f64], inv_width: f64, xs: &[f32], all_finite: bool) {
    let n = counts.len();
    if n == 0 {
        return;
    }
    with_lanes(n, |lanes| {
        if all_finite {
            let (max_bits, _) = scan_and_bin(lanes, n, inv_width, xs);
            let used = touched(f32::from_bits(max_bits), inv_width, n);
            sum_lanes(counts, lanes, used);
            return ((), used);
        }
        let last = (n - 1) as f64;
        for &x in xs.iter().filter(|x| x.is_finite()) {
            lanes[bin_of(x, inv_width, last) as usize] += 1;
        }
        sum_lanes(counts, lanes, n);
        ((), n)
    })
}

thread_local! {
    /// This thread's scratch counters for the binning loops, zero between
    /// uses: zeroing `LANES` × the bins (up to 1 MB at [`MAX_BINS`]) and
    /// summing them all on every call cost as much as binning a small tensor.
    static SCRATCH: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on `LANES * n` zeroed counters. `f` returns its result and how
/// many leading bins of each lane it may have changed, which are zeroed
/// again afterwards (the scratch is dropped instead if `f` panics).
fn with_lanes<R>(n: usize, f: impl FnOnce(&mut [u32]) -> (R, usize)) -> R {
    SCRATCH.with(|cell| {
        let mut buf = std::mem::take(&mut *cell.borrow_mut());
        if buf.len() < LANES * n {
            buf = vec![0; LANES * n];
        }
        let lanes = &mut buf[..LANES * n];
        let (r, used) = f(lanes);
        for lane in lanes.chunks_exact_mut(n) {
            lane[..used.min(n)].fill(0);
        }
        *cell.borrow_mut() = buf;
        r
    })
}

/// How many leading bins values up to `max` land in (every bin for NaN).
fn touched(max: f32, inv_width: f64, n: usize) -> usize {
    bin_of(max, inv_width, (n - 1) as f64) as usize + 1
}

/// Bins every |x| into `lanes` (`LANES` runs of `n` counters, values past
/// the last bin and NaN in the last one) and returns what [`scan`] returns.
///
/// This loop is most of calibration's own work (47 M values per sample on a
/// 640×640 YOLOv8s), so it is compiled twice: for the baseline x86-64 and,
/// picked at run time, for AVX2, where the block's bin indices take a few
/// vector instructions per 8 values.
fn scan_and_bin(lanes: &mut [u32], n: usize, inv_width: f64, xs: &[f32]) -> (u32, usize) {
    assert!(n > 0 && n <= MAX_BINS && lanes.len() >= LANES * n, "lanes hold LANES * n counters");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { scan_and_bin_avx2(lanes, n, inv_width, xs) };
    }
    scan_and_bin_body(lanes, n, inv_width, xs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn scan_and_bin_avx2(lanes: &mut [u32], n: usize, inv_width: f64, xs: &[f32]) -> (u32, usize) {
    scan_and_bin_body(lanes, n, inv_width, xs)
}

#[inline(always)]
fn scan_and_bin_body(lanes: &mut [u32], n: usize, inv_width: f64, xs: &[f32]) -> (u32, usize) {
    const INF_BITS: u32 = 0x7f80_0000;
    let last = (n - 1) as f64;
    // The max of |x| as bits: NaN and Inf order above every finite value,
    // so a max at or past `INF_BITS` says some value is not finite (then
    // the exact count comes from `scan`).
    let mut max_bits = 0u32;
    let mut idx = [0u32; BLOCK];
    let mut blocks = xs.chunks_exact(BLOCK);
    for block in &mut blocks {
        for (slot, &x) in idx.iter_mut().zip(block) {
            let bits = x.to_bits() & 0x7fff_ffff;
            max_bits = max_bits.max(bits);
            let b = (f64::from(f32::from_bits(bits)) * inv_width).min(last);
            // SAFETY: `b` is in `0..=last` (`min` maps NaN to `last`) and
            // `last < MAX_BINS < i32::MAX`.
            *slot = unsafe { b.to_int_unchecked::<i32>() } as u32;
        }
        for quad in idx.chunks_exact(LANES) {
            for (l, &b) in quad.iter().enumerate() {
                // SAFETY: `l < LANES`, `b < n` and `lanes.len() >= LANES * n` (asserted).
                unsafe { *lanes.get_unchecked_mut(l * n + b as usize) += 1 };
            }
        }
    }
    for &x in blocks.remainder() {
        max_bits = max_bits.max(x.to_bits() & 0x7fff_ffff);
        lanes[bin_of(x, inv_width, last) as usize] += 1;
    }
    if max_bits >= INF_BITS {
        return scan(xs);
    }
    (max_bits, 0)
}

/// Adds the first `used` bins of every lane into `counts` (the others are
/// zero).
fn sum_lanes(counts: &mut [f64], lanes: &[u32], used: usize) {
    let n = counts.len();
    for (k, c) in counts.iter_mut().enumerate().take(used) {
        let sum: u64 = (0..LANES).map(|l| u64::from(lanes[l * n + k])).sum();
        *c += sum as f64;
    }
}

/// Number of bins of width `1 / inv_width` needed so `value` is covered.
///
/// A value within 1e-9 bin above an edge counts as on it, which absorbs the
/// rounding of `max · (n / max)` so the first batch's max keeps `n` bins.
fn bins_to_cover(value: f64, inv_width: f64) -> usize {
    let x = value * inv_width - 1e-9;
    if x <= 1.0 { 1 } else { x.ceil() as usize }
}

/// Adds `src` (bins of width `src_width`) into `dst` (bins of `1 / dst_inv`),
/// splitting each source bin over the targets it overlaps by overlap length;
/// anything past the last target bin goes into it. Mass is conserved exactly.
fn rebin_into(src: &[f64], src_width: f64, dst: &mut [f64], dst_width: f64, dst_inv: f64) {
    let Some(last) = dst.len().checked_sub(1) else { return };
    if src_width == dst_width {
        for (k, &c) in src.iter().enumerate() {
            dst[k.min(last)] += c;
        }
        return;
    }
    for (j, &c) in src.iter().enumerate() {
        if c == 0.0 {
            continue;
        }
        let lo = j as f64 * src_width;
        let hi = (j + 1) as f64 * src_width;
        let t0 = ((lo * dst_inv) as usize).min(last);
        let t1 = ((hi * dst_inv) as usize).min(last);
        let mut given = 0.0;
        for (t, d) in dst.iter_mut().enumerate().take(t1).skip(t0) {
            let overlap = (((t + 1) as f64 * dst_width).min(hi) - lo.max(t as f64 * dst_width)).max(0.0);
            let share = c * overlap / (hi - lo);
            *d += share;
            given += share;
        }
        dst[t1] += c - given;
    }
}

/// How [`compute_amax`] turns a histogram into an amax.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// The exact max |x|.
    Max,
    /// A percentile of |x| in percent ([`DEFAULT_PERCENTILE`] = 99.99),
    /// clamped to `0..=100` (NaN acts as 100).
    Percentile(f64),
    /// The amax minimizing the quantization MSE of the bin centers.
    Mse,
    /// TensorRT's entropy (KL divergence) calibration.
    Entropy,
}

/// The amax of `hist` by `method`, as NVIDIA's `HistogramCalibrator` computes it.
///
/// A histogram with no non-zero finite value gives 0.0 for every method
/// (callers decide what to do with such a tensor). Edges are `edges[k] = k·w`.
///
/// - `Max`: [`Histogram::max_abs`], exact.
/// - `Percentile(p)`: with `k` the first bin where the cumulative count
///   reaches `p / 100 · total`, the amax is `edges[k]`, the **lower** edge of
///   that bin (NVIDIA's `calib_bin_edges[searchsorted(cdf, p / 100)]`). The
///   comparison allows a relative 1e-12, where numpy's `cumsum(hist / total)`
///   can end a rounding error short of exactly `p` % and skip to the next
///   non-empty bin (on 100k samples, where `p / 100 · total` is a whole
///   count, that moved the 99.99 % amax 3 to 54 bins too far).
/// - `Mse`: candidates are the bin **centers** `c_i = (i + ½)·w` for
///   `i in 128..num_bins`; each is scored by `Σ_k count_k · (q(c_k) − c_k)²`
///   with `q(x) = min(round_half_even(x·127/c_i), 127) · c_i/127`; the first
///   minimum wins. Fewer than 129 bins: the max.
/// - `Entropy` (TensorRT's KL search): bin 0 first takes bin 1's
///   count (NVIDIA's `bins[0] = bins[1]`, which stops the zero spike of ReLU
///   outputs from dominating). For each `i in 128..=num_bins`: `P` = bins
///   `0..i` with the counts of bins `i..` added to `P[i-1]`; `Q`: bin `k < i`
///   belongs to level `floor(128·k / i)` (exactly `digitize(k,
///   linspace(0, i, 129)) - 1`), bins with count 0 are left out, each
///   non-zero bin gets its level's total over its level's non-zero bins;
///   `KL = Σ_{P>0} p·ln(p/q)` after normalizing both (scipy's `entropy`), `+∞`
///   if some `p > 0` meets `q = 0` (the last bin is empty but outliers exist)
///   or if `Q` is all zero. The **last** minimum wins (NVIDIA's
///   `last_argmin`) and the amax is `edges[i]`, the upper edge of bin `i-1`.
///   Fewer than 128 bins: the max.
pub fn compute_amax(hist: &Histogram, method: Method) -> f32 {
    if hist.counts.is_empty() {
        return 0.0;
    }
    match method {
        Method::Max => hist.max_abs,
        Method::Percentile(p) => hist.bin_edge(percentile_bin(&hist.counts, p)) as f32,
        Method::Mse => match mse_bin(&hist.counts) {
            Some(i) => ((i as f64 + 0.5) * hist.width) as f32,
            None => hist.max_abs,
        },
        Method::Entropy => match entropy_bin(&hist.counts) {
            Some(i) => hist.bin_edge(i) as f32,
            None => hist.max_abs,
        },
    }
}

/// Index of the first bin where the cdf reaches `p` percent (`len` if none).
fn percentile_bin(counts: &[f64], p: f64) -> usize {
    let q = if p.is_nan() { 1.0 } else { p.clamp(0.0, 100.0) / 100.0 };
    let total: f64 = counts.iter().sum();
    let target = q * total - 1e-12 * total;
    let mut cumulative = 0.0;
    for (k, &c) in counts.iter().enumerate() {
        cumulative += c;
        if cumulative >= target {
            return k;
        }
    }
    counts.len()
}

/// Bin whose center minimizes the histogram's quantization error, if any
/// candidate exists.
///
/// The search rounds ~4 M values per tensor; x86-64's baseline has no
/// rounding instruction (each round is a call into libm), so it is also
/// compiled for AVX2 (which brings SSE4.1's) and picked at run time: the
/// same arithmetic, the same result, as rounding is exact.
fn mse_bin(counts: &[f64]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { mse_bin_avx2(counts) };
    }
    mse_bin_body(counts)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn mse_bin_avx2(counts: &[f64]) -> Option<usize> {
    mse_bin_body(counts)
}

/// Candidates scored together by [`mse_bin_body`].
const MSE_LANES: usize = 8;

/// The search, [`MSE_LANES`] candidates at a time: each candidate's error
/// is still summed over the bins in order, with the same operations, so
/// the scores are bit for bit those of one candidate at a time (the
/// reference in the tests); but the lanes are independent, so the adds no
/// longer wait on each other and the compiler vectorizes across them.
#[inline(always)]
fn mse_bin_body(counts: &[f64]) -> Option<usize> {
    let mut best: Option<(f64, usize)> = None;
    mse_scores(counts, |i, e| {
        if best.is_none_or(|(b, _)| e < b) {
            best = Some((e, i));
        }
    });
    best.map(|(_, i)| i)
}

/// Hands `score(i, error)` the quantization error of every candidate bin
/// `i` in order (see [`mse_bin_body`]).
///
/// Bins past a candidate's clipping point all quantize to 127: their error
/// is `(127 / s − x)²` with `127 / s` the same for all of them, so from the
/// first bin where every candidate of the block clips (the rounding is
/// monotone in the bin), the block drops the rounding and the division,
/// which were most of the work. `127 / s` is computed as the full path
/// computes it, so every score is bit for bit the same.
#[inline(always)]
fn mse_scores(counts: &[f64], mut score: impl FnMut(usize, f64)) {
    // Scores do not depend on the width: work in units of one bin.
    let n = counts.len();
    let mut first = START_BIN;
    while first < n {
        let lanes = (n - first).min(MSE_LANES);
        let mut scale = [1.0f64; MSE_LANES];
        for (j, s) in scale.iter_mut().enumerate().take(lanes) {
            *s = QMAX / ((first + j) as f64 + 0.5);
        }
        let clip: [f64; MSE_LANES] = std::array::from_fn(|j| QMAX / scale[j]);
        // The first bin where the block's last real candidate (the smallest
        // scale) rounds to 127; every other candidate clips there too.
        let clips = |k: usize| ((k as f64 + 0.5) * scale[lanes - 1]).round_ties_even() >= QMAX;
        let (mut lo, mut hi) = (0, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if clips(mid) { hi = mid } else { lo = mid + 1 }
        }
        let mut err = [0.0f64; MSE_LANES];
        for (k, &c) in counts.iter().enumerate().take(lo) {
            if c != 0.0 {
                let x = k as f64 + 0.5;
                for j in 0..MSE_LANES {
                    let d = (x * scale[j]).round_ties_even().min(QMAX) / scale[j] - x;
                    err[j] += c * d * d;
                }
            }
        }
        for (k, &c) in counts.iter().enumerate().skip(lo) {
            if c != 0.0 {
                let x = k as f64 + 0.5;
                for j in 0..MSE_LANES {
                    let d = clip[j] - x;
                    err[j] += c * d * d;
                }
            }
        }
        for (j, &e) in err.iter().enumerate().take(lanes) {
            score(first + j, e);
        }
        first += MSE_LANES;
    }
}

/// The KL threshold `i` (amax = `edges[i]`), or `None` with < 128 bins.
fn entropy_bin(counts: &[f64]) -> Option<usize> {
    if counts.len() < START_BIN {
        return None;
    }
    let mut bins = counts.to_vec();
    bins[0] = bins[1];
    let n = bins.len();
    // Prefix sums make each candidate O(levels) instead of O(i): with
    // T = Σ all bins (P's total, outliers included), C(i) = Σ_{k<i} c_k (Q's
    // total) and p'_k the P counts, scipy's entropy is
    //   KL = (1/T)·Σ p' ln p' − ln T + ln C(i) − (1/T)·Σ_L ln(S_L/nz_L)·Σ_{k∈L} p'_k
    // where level L holds bins k < i with ⌊128k/i⌋ = L, S_L their total and
    // nz_L the number of non-zero ones (zero bins get no Q mass).
    let xlnx = |x: f64| if x > 0.0 { x * x.ln() } else { 0.0 };
    let mut c = vec![0.0; n + 1];
    let mut nz = vec![0u32; n + 1];
    let mut cl = vec![0.0; n + 1];
    for (k, &b) in bins.iter().enumerate() {
        c[k + 1] = c[k] + b;
        nz[k + 1] = nz[k] + u32::from(b != 0.0);
        cl[k + 1] = cl[k] + xlnx(b);
    }
    let total = c[n];
    let mut best = (f64::INFINITY, n);
    // A candidate `i` has levels of `w = ⌊i/128⌋` or `w + 1` bins, and
    // the 128 candidates that share `w` share their levels: for each `w`,
    // `terms[2a + d]` holds S·ln(S/nz) of the level of `w + d` bins
    // starting at bin `a` (0 without non-zero bins) and `lnq[2a + d]` its
    // ln(S/nz). Each level's logarithm is computed once (`of_width`: the
    // levels of `w + 1` bins serve `w` and `w + 1`), and each candidate only
    // gathers its 128 terms, without a branch, into four sums (one would
    // wait on each add).
    let of_width = |v: usize, starts: usize| -> (Vec<f64>, Vec<f64>) {
        (0..starts)
            .map(|a| {
                let b = a + v;
                if b <= n && nz[b] > nz[a] {
                    let sum = c[b] - c[a];
                    let l = (sum / f64::from(nz[b] - nz[a])).ln();
                    (sum * l, l)
                } else {
                    (0.0, 0.0)
                }
            })
            .unzip()
    };
    let last_of = |w: usize| (w * LEVELS + LEVELS - 1).min(n);
    let mut terms = vec![0.0; 2 * n + 2];
    let mut lnq = vec![0.0; 2 * n + 2];
    let mut narrow = of_width(START_BIN / LEVELS, last_of(START_BIN / LEVELS) + 1);
    for w in START_BIN / LEVELS..=n / LEVELS {
        let (first, last) = ((w * LEVELS).max(START_BIN), last_of(w));
        if first > last {
            break;
        }
        // Starts up to `last` (a level ends at most at bin `last`).
        let wide = of_width(w + 1, last_of(w + 1) + 1);
        for a in 0..=last {
            terms[2 * a] = narrow.0[a];
            lnq[2 * a] = narrow.1[a];
            terms[2 * a + 1] = wide.0[a];
            lnq[2 * a + 1] = wide.1[a];
        }
        narrow = wide;
        for i in first..=last {
            let outliers = total - c[i];
            let last_bin = bins[i - 1];
            let kl = if c[i] == 0.0 || total == 0.0 || (outliers > 0.0 && last_bin == 0.0) {
                f64::INFINITY
            } else {
                // Level `l` is bins [⌈l·i/128⌉, ⌈(l+1)·i/128⌉): its entry
                // is at 2a + (b - a - w) = a + b - w.
                let mut bounds = [0usize; LEVELS + 1];
                for (l, e) in bounds.iter_mut().enumerate() {
                    *e = (l * i).div_ceil(LEVELS);
                }
                let mut sums = [0.0; 4];
                for l in (0..LEVELS).step_by(4) {
                    for (k, s) in sums.iter_mut().enumerate() {
                        *s += terms[bounds[l + k] + bounds[l + k + 1] - w];
                    }
                }
                // The last bin also carries the outliers, in P only.
                let at_last = bounds[LEVELS - 1] + i - w;
                let weighted = (sums[0] + sums[1]) + (sums[2] + sums[3]) + outliers * lnq[at_last];
                let plnp = cl[i - 1] + xlnx(last_bin + outliers);
                (plnp - weighted) / total - total.ln() + c[i].ln()
            };
            if kl <= best.0 {
                best = (kl, i);
            }
        }
    }
    Some(best.1)
}

/// TensorRT's `Q` (the direct form, kept as the tests' cross-check): merges `bins` into `sums.len()` levels (bin `k` in level
/// `floor(levels·k / n)`), leaving zero bins out, and expands back so each
/// non-zero bin gets its level's total over its level's non-zero bins.
#[cfg(test)]
fn quantize_expand(bins: &[f64], sums: &mut [f64], nonzero: &mut [u32], q: &mut [f64]) {
    let (n, levels) = (bins.len(), sums.len());
    sums.fill(0.0);
    nonzero.fill(0);
    for (k, &c) in bins.iter().enumerate() {
        if c != 0.0 {
            sums[k * levels / n] += c;
            nonzero[k * levels / n] += 1;
        }
    }
    for (k, (qk, &c)) in q.iter_mut().zip(bins).enumerate() {
        let l = k * levels / n;
        *qk = if c != 0.0 { sums[l] / f64::from(nonzero[l]) } else { 0.0 };
    }
}

/// scipy's `entropy(P, Q)` where `P` is `head` with `outliers` added to its
/// last bin; `+∞` where `p > 0` meets `q = 0` or when `Q` sums to 0.
#[cfg(test)]
fn kl_divergence(head: &[f64], outliers: f64, q: &[f64]) -> f64 {
    let last = head.len() - 1;
    let p_at = |k: usize| if k == last { head[k] + outliers } else { head[k] };
    let sum_p: f64 = (0..head.len()).map(p_at).sum();
    let sum_q: f64 = q.iter().sum();
    if sum_q == 0.0 || sum_p == 0.0 {
        return f64::INFINITY;
    }
    let mut kl = 0.0;
    for (k, &qk) in q.iter().enumerate() {
        let pk = p_at(k) / sum_p;
        if pk > 0.0 {
            if qk == 0.0 {
                return f64::INFINITY;
            }
            let qk = qk / sum_q;
            kl += pk * (pk / qk).ln();
        }
    }
    kl
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-candidate O(i) search the prefix-sum version replaced.
    fn entropy_bin_direct(counts: &[f64]) -> Option<usize> {
        if counts.len() < START_BIN {
            return None;
        }
        let mut bins = counts.to_vec();
        bins[0] = bins[1];
        let mut q = vec![0.0; bins.len()];
        let (mut sums, mut nonzero) = (vec![0.0; LEVELS], vec![0u32; LEVELS]);
        let mut best = (f64::INFINITY, bins.len());
        for i in START_BIN..=bins.len() {
            let (head, tail) = bins.split_at(i);
            quantize_expand(head, &mut sums, &mut nonzero, &mut q[..i]);
            let kl = kl_divergence(head, tail.iter().sum(), &q[..i]);
            if kl <= best.0 {
                best = (kl, i);
            }
        }
        Some(best.1)
    }

    #[test]
    fn fast_entropy_search_picks_the_direct_searchs_bin() {
        let mut rng = Rng(11);
        for case in 0..40 {
            let n = 128 + (rng.next_u64() % 2000) as usize;
            // Sparse, peaked and flat histograms, some with empty tails.
            let counts: Vec<f64> = (0..n)
                .map(|k| {
                    let r = rng.next_u64() % 100;
                    let decay = (-(k as f64) / (n as f64 / (1.0 + (case % 5) as f64))).exp();
                    if r < (case % 4) as u64 * 20 { 0.0 } else { (1000.0 * decay * (r as f64 + 1.0)).floor() }
                })
                .collect();
            assert_eq!(entropy_bin(&counts), entropy_bin_direct(&counts), "case {case}, {n} bins");
        }
    }

    /// SplitMix64: tiny, seeded, deterministic.
    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// Uniform in the open interval (0, 1).
        fn open01(&mut self) -> f64 {
            ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }

        /// Box-Muller.
        fn gaussian(&mut self) -> f64 {
            let (u1, u2) = (self.open01(), self.open01());
            (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        }

        /// Inverse CDF of Laplace(0, b).
        fn laplace(&mut self, b: f64) -> f64 {
            let u = self.open01() - 0.5;
            -b * u.signum() * (1.0 - 2.0 * u.abs()).ln()
        }
    }

    fn gaussian(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng(seed);
        (0..n).map(|_| rng.gaussian() as f32).collect()
    }

    /// Laplace(0, 1) with a few large outliers (like a detector head).
    fn laplace_outliers(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng(seed);
        let mut xs: Vec<f32> = (0..n).map(|_| rng.laplace(1.0) as f32).collect();
        for (k, v) in [(7, 45.0), (n / 3, -60.0), (n / 2, 38.5), (n - 2, 52.25)] {
            xs[k] = v;
        }
        xs
    }

    /// ReLU output: half exact zeros.
    fn relu(n: usize, seed: u64) -> Vec<f32> {
        gaussian(n, seed).into_iter().map(|x| x.max(0.0)).collect()
    }

    fn hist_of(xs: &[f32]) -> Histogram {
        let mut h = Histogram::default();
        h.add(xs);
        h
    }

    fn true_max(xs: &[f32]) -> f32 {
        xs.iter().fold(0.0f32, |m, x| m.max(x.abs()))
    }

    /// numpy's `np.percentile(|x|, p)` with the default 'linear' method.
    fn np_percentile(xs: &[f32], p: f64) -> f64 {
        let mut a: Vec<f64> = xs.iter().map(|x| f64::from(x.abs())).collect();
        a.sort_by(f64::total_cmp);
        let h = (a.len() - 1) as f64 * p / 100.0;
        let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
        a[lo] + (h - lo as f64) * (a[hi] - a[lo])
    }

    /// NVIDIA's `_compute_amax_entropy` on `np.histogram(|x|, 2048, range=(0, max))`,
    /// written out with plain loops and nothing shared with the code under test.
    /// Returns the threshold bin `i` (amax = edges[i]).
    fn reference_entropy_bin(xs: &[f32]) -> usize {
        let amax = xs.iter().map(|x| f64::from(x.abs())).fold(0.0, f64::max);
        let nb = 2048;
        let mut hist = vec![0.0f64; nb];
        for x in xs {
            let mut k = (f64::from(x.abs()) / (amax / nb as f64)).floor() as usize;
            if k >= nb {
                k = nb - 1;
            }
            hist[k] += 1.0;
        }
        hist[0] = hist[1];
        let levels = 128;
        let (mut best_kl, mut best_i) = (f64::INFINITY, 0);
        for i in 128..=nb {
            // space = np.linspace(0, i, 129); digitized = np.digitize(range(i), space) - 1
            let space: Vec<f64> = (0..=levels).map(|m| m as f64 * (i as f64 / levels as f64)).collect();
            let mut digit = vec![-1i64; i];
            let mut m = 0;
            for (k, d) in digit.iter_mut().enumerate() {
                while m < space.len() && space[m] <= k as f64 {
                    m += 1;
                }
                if hist[k] != 0.0 {
                    *d = m as i64 - 1;
                }
            }
            let mut density = vec![0.0f64; levels];
            let mut counter = vec![0usize; levels];
            for k in 0..i {
                if digit[k] >= 0 {
                    density[digit[k] as usize] += hist[k];
                    counter[digit[k] as usize] += 1;
                }
            }
            for l in 0..levels {
                if counter[l] > 0 {
                    density[l] /= counter[l] as f64;
                }
            }
            let mut q = vec![0.0f64; i];
            for k in 0..i {
                if digit[k] >= 0 {
                    q[k] = density[digit[k] as usize];
                }
            }
            let mut p = hist[..i].to_vec();
            let mut outliers = 0.0;
            for c in &hist[i..] {
                outliers += c;
            }
            p[i - 1] += outliers;
            // scipy.stats.entropy(p, q)
            let sp: f64 = p.iter().sum();
            let sq: f64 = q.iter().sum();
            let mut kl = 0.0;
            for k in 0..i {
                let pk = p[k] / sp;
                let qk = q[k] / sq;
                if pk > 0.0 {
                    if qk > 0.0 {
                        kl += pk * (pk / qk).ln();
                    } else {
                        kl = f64::INFINITY;
                    }
                }
            }
            if kl <= best_kl {
                best_kl = kl;
                best_i = i;
            }
        }
        best_i
    }

    /// Mean squared error of symmetric INT8 fake quantization of every sample.
    fn sample_mse(xs: &[f32], amax: f64) -> f64 {
        let scale = amax / 127.0;
        let mut err = 0.0;
        for x in xs {
            let x = f64::from(*x);
            let xq = (x / scale).round().clamp(-127.0, 127.0) * scale;
            err += (xq - x) * (xq - x);
        }
        err / xs.len() as f64
    }

    /// Brute force over every sample: the edge k·w (k in 128..=n) with the
    /// smallest [`sample_mse`], and that MSE.
    fn brute_force_mse_amax(xs: &[f32], width: f64, n: usize) -> (f64, f64) {
        let (mut best_err, mut best) = (f64::INFINITY, 0.0);
        for k in 128..=n {
            let amax = k as f64 * width;
            let err = sample_mse(xs, amax);
            if err < best_err {
                best_err = err;
                best = amax;
            }
        }
        (best, best_err)
    }

    /// NVIDIA's `_compute_amax_mse` with plain loops: candidates are the bin
    /// centers `(edges[i] + edges[i+1]) / 2` for i in 128..n, scored by
    /// `Σ counts · (fake_quant(center) − center)²` (torch.round is half-even),
    /// first minimum. Returns the amax.
    fn reference_mse_amax(counts: &[f64], width: f64) -> f64 {
        let edges: Vec<f64> = (0..=counts.len()).map(|k| k as f64 * width).collect();
        let centers: Vec<f64> = (0..counts.len()).map(|k| (edges[k] + edges[k + 1]) / 2.0).collect();
        let (mut best_err, mut best) = (f64::INFINITY, 0.0);
        for &amax in &centers[128..] {
            let scale = 127.0 / amax;
            let mut err = 0.0;
            for (c, n) in centers.iter().zip(counts) {
                let q = (c * scale).round_ties_even().clamp(-127.0, 127.0) / scale;
                err += (q - c) * (q - c) * n;
            }
            if err < best_err {
                best_err = err;
                best = amax;
            }
        }
        best
    }

    #[test]
    fn max_is_exact_over_batches_with_growth() {
        let batches = [gaussian(5000, 1), laplace_outliers(5000, 2), relu(5000, 3), gaussian(10, 4)];
        let mut h = Histogram::default();
        let mut all = Vec::new();
        for b in &batches {
            h.add(b);
            all.extend_from_slice(b);
            assert_eq!(h.max_abs(), true_max(&all));
            assert_eq!(compute_amax(&h, Method::Max), true_max(&all));
        }
        assert!(h.counts().len() > DEFAULT_NUM_BINS, "the Laplace outliers must have grown the range");
        assert_eq!(h.total(), all.len() as f64);
    }

    #[test]
    fn growth_keeps_width_and_counts_match_a_direct_count() {
        let first = gaussian(20_000, 11);
        let second: Vec<f32> = gaussian(20_000, 12).iter().map(|x| x * 2.5).collect();
        let (m1, m2) = (true_max(&first), true_max(&second));
        assert!(m2 > m1);
        let mut h = Histogram::default();
        h.add(&first);
        h.add(&second);
        let width = f64::from(m1) / 2048.0;
        assert_eq!(h.bin_width(), Some(width));
        let n = (f64::from(m2) / width).ceil() as usize;
        assert_eq!(h.counts().len(), n);
        // Values at or past the last edge go to the last bin *at the time*:
        // the first batch's max stays in bin 2047.
        let mut direct = vec![0.0; n];
        for (batch, bins) in [(&first, 2048), (&second, n)] {
            for x in batch {
                direct[((f64::from(x.abs()) / width).floor() as usize).min(bins - 1)] += 1.0;
            }
        }
        let mismatch = h.counts().iter().zip(&direct).position(|(a, b)| a != b);
        assert_eq!(mismatch, None, "first differing bin");
        // A batch inside the range does not grow it.
        h.add(&[0.5 * m1, -m2]);
        assert_eq!(h.counts().len(), n);
        assert_eq!(h.max_abs(), m2);
    }

    #[test]
    fn one_pass_and_two_pass_batches_count_like_a_direct_count() {
        // The first batch fixes the range (two passes); batches inside it
        // take the one-pass path (long, odd-length, remainder-only), a batch
        // with NaN/Inf and a batch that grows the range go back to two.
        let first = gaussian(10_000, 21);
        let m = true_max(&first);
        let mut with_nan: Vec<f32> = gaussian(1000, 23).iter().map(|x| x.clamp(-m, m)).collect();
        with_nan[500] = f32::NAN;
        with_nan[3] = f32::NEG_INFINITY;
        let batches = [
            first,
            gaussian(4099, 22).iter().map(|x| (x * 0.5).clamp(-m, m)).collect(),
            vec![0.0, -0.0, m, -m, f32::MIN_POSITIVE, 1e-40],
            with_nan,
            gaussian(3000, 24).iter().map(|x| x * 3.0).collect(),
        ];
        let width = f64::from(m) / 2048.0;
        let mut h = Histogram::default();
        let mut direct: Vec<f64> = Vec::new();
        for b in &batches {
            h.add(b);
            let n = h.counts().len();
            direct.resize(n, 0.0);
            for x in b.iter().filter(|x| x.is_finite()) {
                direct[((f64::from(x.abs()) / width).floor() as usize).min(n - 1)] += 1.0;
            }
        }
        assert!(direct.len() > 2048, "the last batch must have grown the range");
        let mismatch = h.counts().iter().zip(&direct).position(|(a, b)| a != b);
        assert_eq!(mismatch, None, "first differing bin");
        assert_eq!((h.nan_count(), h.inf_count()), (1, 1));
        assert_eq!(h.total(), batches.iter().map(|b| b.len() as f64).sum::<f64>() - 2.0);
        assert_eq!(h.max_abs(), true_max(&batches[4]).max(m));
    }

    /// Two workers in step: the one a sample ahead adds its batch at once
    /// when the bins cover it, else after the earlier one. Whatever the
    /// bins do meanwhile (grow, or double their width past `MAX_BINS`), the
    /// histogram is the in-turn one exactly.
    #[test]
    fn batches_added_out_of_turn_when_covered_give_the_in_turn_histogram() {
        let scales = [1.0f32, 0.5, 3.0, 0.2, 40.0, 1.0, 2000.0, 0.1, 1.0, 5.0, 1.0, 1.0];
        let batches: Vec<Vec<f32>> = scales
            .iter()
            .enumerate()
            .map(|(k, &f)| laplace_outliers(3_000 + 11 * k, 40 + k as u64).into_iter().map(|x| x * f).collect())
            .collect();
        for bins in [64, 2048, MAX_BINS] {
            let mut in_turn = Histogram::new(bins);
            for b in &batches {
                in_turn.add(b);
            }
            let (mut h, mut early) = (Histogram::new(bins), 0);
            for pair in batches.chunks(2) {
                let ahead = pair.len() == 2 && h.add_if_covered(&pair[1]);
                h.add(&pair[0]);
                if ahead {
                    early += 1;
                } else if let Some(b) = pair.get(1) {
                    h.add(b);
                }
            }
            assert!(early >= 2, "{bins} bins: only {early} batches went early");
            assert!(h.counts() == in_turn.counts(), "{bins} bins: counts");
            assert_eq!(
                (h.total(), h.max_abs(), h.bin_width()),
                (in_turn.total(), in_turn.max_abs(), in_turn.bin_width()),
                "{bins} bins"
            );
        }
    }

    /// Histograms of different sizes built in turn on one thread share its
    /// scratch counters: each must come out as if built alone on a thread
    /// of its own (the scratch left all zero after every use).
    #[test]
    fn shared_scratch_leaves_no_counts_behind() {
        fn batches(seed: u64) -> Vec<Vec<f32>> {
            let mut v: Vec<Vec<f32>> = (0..6).map(|k| laplace_outliers(5_000 + 37 * k, seed + k as u64)).collect();
            // A batch 40x wider than the first: the histogram grows to many more bins.
            v[3].iter_mut().for_each(|x| *x *= 40.0);
            v
        }
        fn build(bins: usize, seed: u64) -> Histogram {
            let mut h = Histogram::new(bins);
            for b in batches(seed) {
                h.add(&b);
            }
            h
        }
        let alone: Vec<Vec<f64>> = [(2048, 1u64), (64, 2), (MAX_BINS, 3)]
            .into_iter()
            .map(|(bins, seed)| std::thread::spawn(move || build(bins, seed).counts().to_vec()).join().unwrap())
            .collect();
        let mut hs = [Histogram::new(2048), Histogram::new(64), Histogram::new(MAX_BINS)];
        let all: Vec<Vec<Vec<f32>>> = [1, 2, 3].into_iter().map(batches).collect();
        for k in 0..6 {
            for (h, b) in hs.iter_mut().zip(&all) {
                h.add(&b[k]);
            }
        }
        for (h, a) in hs.iter().zip(&alone) {
            assert!(h.counts() == &a[..], "interleaved on one thread = alone");
        }
    }

    #[test]
    fn binning_loop_builds_count_alike() {
        let xs: Vec<f32> = laplace_outliers(10_003, 31);
        let n = 2048;
        let inv = n as f64 / f64::from(true_max(&xs));
        let mut picked = vec![0u32; LANES * n];
        let mut baseline = vec![0u32; LANES * n];
        let a = scan_and_bin(&mut picked, n, inv, &xs);
        let b = scan_and_bin_body(&mut baseline, n, inv, &xs);
        assert_eq!(a, b);
        assert!(picked == baseline, "the run-time picked build counts like the baseline one");
        assert_eq!(picked.iter().map(|&c| c as usize).sum::<usize>(), xs.len());
    }

    #[test]
    fn percentile_within_one_bin_of_numpy() {
        let grown: Vec<f32> =
            gaussian(50_000, 24).into_iter().chain(gaussian(50_000, 25).iter().map(|x| x * 2.0)).collect();
        for xs in [gaussian(100_000, 21), laplace_outliers(100_000, 22), relu(100_000, 23), grown] {
            let mut h = Histogram::default();
            for chunk in xs.chunks(50_000) {
                h.add(chunk);
            }
            let w = h.bin_width().unwrap();
            for p in [50.0, 99.0, 99.9, DEFAULT_PERCENTILE] {
                let amax = f64::from(compute_amax(&h, Method::Percentile(p)));
                let reference = np_percentile(&xs, p);
                assert!((amax - reference).abs() <= w, "p={p}: amax {amax} vs numpy {reference} (bin {w})");
            }
        }
    }

    #[test]
    fn entropy_matches_reference_implementation() {
        for xs in [gaussian(100_000, 31), laplace_outliers(100_000, 32), relu(100_000, 33)] {
            let h = hist_of(&xs);
            let expected = reference_entropy_bin(&xs);
            assert_eq!(entropy_bin(h.counts()), Some(expected));
            assert_eq!(compute_amax(&h, Method::Entropy), h.bin_edge(expected) as f32);
        }
    }

    #[test]
    fn quantize_expand_reproduces_the_seed_example() {
        let p = [1.0, 0.0, 2.0, 3.0, 5.0, 3.0, 1.0, 7.0];
        let (mut sums, mut nonzero, mut q) = (vec![0.0; 2], vec![0; 2], vec![0.0; 8]);
        quantize_expand(&p, &mut sums, &mut nonzero, &mut q);
        assert_eq!(q, [2.0, 0.0, 2.0, 2.0, 4.0, 4.0, 4.0, 4.0]);
    }

    #[test]
    fn mse_within_one_bin_of_brute_force_over_samples() {
        let cases =
            [("gaussian", gaussian(40_000, 41)), ("laplace", laplace_outliers(40_000, 42)), ("relu", relu(40_000, 43))];
        for (name, xs) in cases {
            let h = hist_of(&xs);
            let w = h.bin_width().unwrap();
            let amax = f64::from(compute_amax(&h, Method::Mse));
            let (reference, best_mse) = brute_force_mse_amax(&xs, w, h.counts().len());
            let excess = sample_mse(&xs, amax) / best_mse - 1.0;
            assert!(excess < 1e-3, "{name}: MSE at {amax} is {excess:e} above the optimum at {reference}");
            if name != "laplace" {
                assert!((amax - reference).abs() <= w, "{name}: mse amax {amax} vs brute force {reference} (bin {w})");
            }
        }
    }

    #[test]
    fn mse_matches_reference_over_bin_centers() {
        for xs in [gaussian(100_000, 44), laplace_outliers(100_000, 45), relu(100_000, 46)] {
            let h = hist_of(&xs);
            let w = h.bin_width().unwrap();
            let amax = f64::from(compute_amax(&h, Method::Mse));
            let reference = reference_mse_amax(h.counts(), w);
            assert!((amax - reference).abs() <= 1e-6 * reference, "mse amax {amax} vs reference {reference}");
        }
    }

    /// The lane-blocked search scores each candidate bit for bit as one
    /// candidate at a time would (the clipped bins' shortcut included), so
    /// it picks the same bin, ties included (the first minimum), whatever
    /// the length modulo the lane count.
    #[test]
    fn mse_search_in_lanes_is_the_one_at_a_time_search() {
        fn one_at_a_time(counts: &[f64]) -> Vec<(usize, f64)> {
            let mut scores = Vec::new();
            for i in START_BIN..counts.len() {
                let scale = QMAX / (i as f64 + 0.5);
                let mut err = 0.0;
                for (k, &c) in counts.iter().enumerate() {
                    if c != 0.0 {
                        let x = k as f64 + 0.5;
                        let d = (x * scale).round_ties_even().min(QMAX) / scale - x;
                        err += c * d * d;
                    }
                }
                scores.push((i, err));
            }
            scores
        }
        let mut cases: Vec<Vec<f64>> = Vec::new();
        for xs in [gaussian(20_000, 7), laplace_outliers(20_000, 8), relu(20_000, 9)] {
            cases.push(hist_of(&xs).counts().to_vec());
        }
        for len in [0, 100, 128, 129, 135, 136, 137, 300, 2048] {
            cases.push((0..len).map(|k| if k % 3 == 0 { 0.0 } else { ((k * 7919) % 23) as f64 }).collect());
        }
        cases.push(vec![1.0; 200]);
        for counts in cases {
            let want = one_at_a_time(&counts);
            let mut got = Vec::new();
            mse_scores(&counts, |i, e| got.push((i, e)));
            assert_eq!(got.len(), want.len(), "{} bins", counts.len());
            for (g, w) in got.iter().zip(&want) {
                assert!(g.0 == w.0 && g.1.to_bits() == w.1.to_bits(), "{} bins: {g:?} vs {w:?}", counts.len());
            }
            let first_min = want.iter().fold(None, |b: Option<(usize, f64)>, &(i, e)| match b {
                Some((_, be)) if e >= be => b,
                _ => Some((i, e)),
            });
            let want = first_min.map(|(i, _)| i);
            assert_eq!(mse_bin_body(&counts), want, "{} bins", counts.len());
            assert_eq!(mse_bin(&counts), want, "{} bins (dispatched)", counts.len());
        }
    }

    #[test]
    fn merge_of_two_halves_matches_one_histogram() {
        let a = gaussian(50_000, 51);
        let b: Vec<f32> = gaussian(50_000, 52).iter().map(|x| x * 3.0).collect();
        let (ha, hb) = (hist_of(&a), hist_of(&b));
        let mut single = hist_of(&a);
        single.add(&b);
        let mut ab = ha.clone();
        ab.merge(&hb);
        let mut ba = hb.clone();
        ba.merge(&ha);
        let wide = hb.bin_width().unwrap();
        assert_eq!(ab.bin_width(), Some(wide));
        for m in [&ab, &ba] {
            assert_eq!(m.max_abs(), single.max_abs());
            assert_eq!(m.total(), 100_000.0);
            assert!((m.counts().iter().sum::<f64>() - 100_000.0).abs() < 1e-6);
            for p in [99.0, 99.9, DEFAULT_PERCENTILE] {
                let (merged, one) =
                    (compute_amax(m, Method::Percentile(p)), compute_amax(&single, Method::Percentile(p)));
                assert!(f64::from((merged - one).abs()) <= 2.0 * wide, "p={p}: merged {merged} vs single {one}");
            }
        }
        assert_eq!(ab.counts().len(), ba.counts().len());
        for (x, y) in ab.counts().iter().zip(ba.counts()) {
            assert!((x - y).abs() < 1e-9 * x.max(1.0));
        }
    }

    #[test]
    fn merge_same_width_adds_and_handles_empty_or_zero_histograms() {
        let xs = gaussian(10_000, 61);
        let h = hist_of(&xs);
        let mut twice = h.clone();
        twice.merge(&h);
        let doubled: Vec<f64> = h.counts().iter().map(|c| 2.0 * c).collect();
        assert_eq!(twice.counts(), &doubled[..]);

        let mut zeros = Histogram::default();
        zeros.add(&[0.0; 5]);
        zeros.add(&[f32::NAN]);
        let mut into_zeros = zeros.clone();
        into_zeros.merge(&h);
        let mut from_zeros = h.clone();
        from_zeros.merge(&zeros);
        for m in [&into_zeros, &from_zeros] {
            assert_eq!(m.counts()[0], h.counts()[0] + 5.0);
            assert_eq!(m.total(), 10_005.0);
            assert_eq!(m.nan_count(), 1);
            assert_eq!(m.max_abs(), h.max_abs());
        }
        let mut empty = Histogram::default();
        empty.merge(&Histogram::default());
        assert!(empty.is_empty());
        assert_eq!(compute_amax(&empty, Method::Entropy), 0.0);
    }

    #[test]
    fn nan_and_inf_are_counted_not_binned() {
        let mut h = Histogram::default();
        h.add(&[f32::NAN, f32::NAN, f32::INFINITY]);
        assert!(h.is_empty() && h.counts().is_empty());
        h.add(&[1.0, f32::NEG_INFINITY, -3.0, f32::NAN, 2.0]);
        assert_eq!((h.nan_count(), h.inf_count()), (3, 2));
        assert_eq!(h.max_abs(), 3.0);
        assert_eq!(h.total(), 3.0);
        assert_eq!(h.counts().iter().sum::<f64>(), 3.0);
        assert_eq!(h.bin_width(), Some(3.0 / 2048.0));
        assert_eq!(compute_amax(&h, Method::Max), 3.0);
    }

    #[test]
    fn zeros_before_the_range_go_to_bin_zero() {
        let mut h = Histogram::default();
        h.add(&[0.0; 100]);
        h.add(&[-0.0; 20]);
        assert_eq!(h.bin_width(), None);
        assert_eq!(h.total(), 120.0);
        for m in [Method::Max, Method::Percentile(99.0), Method::Mse, Method::Entropy] {
            assert_eq!(compute_amax(&h, m), 0.0);
        }
        h.add(&[0.5, 1.0, -2.0, 0.0]);
        assert_eq!(h.bin_width(), Some(2.0 / 2048.0));
        assert_eq!(h.counts()[0], 121.0);
        assert_eq!((h.counts()[512], h.counts()[1024], h.counts()[2047]), (1.0, 1.0, 1.0));
        assert_eq!(h.counts().iter().sum::<f64>(), 124.0);
        assert_eq!(h.max_abs(), 2.0);
    }

    #[test]
    fn empty_constant_and_single_value() {
        let empty = Histogram::default();
        for m in [Method::Max, Method::Percentile(99.99), Method::Mse, Method::Entropy] {
            assert_eq!(compute_amax(&empty, m), 0.0);
        }
        for xs in [vec![-1.5f32; 1000], vec![3.0f32]] {
            let h = hist_of(&xs);
            let c = true_max(&xs);
            let w = h.bin_width().unwrap();
            assert_eq!(compute_amax(&h, Method::Max), c);
            // Every candidate below the max puts outliers on an empty bin: +inf.
            assert_eq!(compute_amax(&h, Method::Entropy), c);
            // Lower edge of the last bin.
            assert_eq!(compute_amax(&h, Method::Percentile(99.99)), (2047.0 * w) as f32);
            // The center of the last bin quantizes itself exactly.
            assert_eq!(compute_amax(&h, Method::Mse), (2047.5 * w) as f32);
        }
    }

    #[test]
    fn few_bins_fall_back_to_max_and_odd_percentiles_do_not_panic() {
        let xs = laplace_outliers(5000, 71);
        let mut h = Histogram::new(64);
        h.add(&xs);
        assert_eq!(h.counts().len(), 64);
        assert_eq!(compute_amax(&h, Method::Entropy), h.max_abs());
        assert_eq!(compute_amax(&h, Method::Mse), h.max_abs());
        let top = h.bin_edge(64) as f32;
        for p in [0.0, -5.0, 100.0, 250.0, f64::NAN] {
            let a = compute_amax(&h, Method::Percentile(p));
            assert!((0.0..=top).contains(&a), "p={p}: {a}");
        }
        assert_eq!(compute_amax(&h, Method::Percentile(0.0)), 0.0);
    }

    #[test]
    fn huge_growth_coarsens_instead_of_allocating() {
        let mut h = Histogram::default();
        h.add(&[1e-3, 5e-4]);
        h.add(&[1000.0, -7.0]);
        assert!(h.counts().len() <= MAX_BINS);
        let w = h.bin_width().unwrap();
        let factor = w / (1e-3f32 as f64 / 2048.0);
        assert_eq!(factor, factor.round());
        assert!((factor.round() as u64).is_power_of_two());
        assert!(h.bin_edge(h.counts().len()) >= 1000.0);
        assert_eq!(h.counts().iter().sum::<f64>(), 4.0);
        assert_eq!(h.max_abs(), 1000.0);
        assert_eq!(h.counts()[h.counts().len() - 1], 1.0);
    }
}
