//! glibc malloc settings for running models over many samples.
//!
//! Every run allocates its activations afresh (ONNX Runtime's arena is off,
//! see `ort_engine`, and tract has none), and calibration fetches them all:
//! about 190 MB per sample on a 640×640 YOLOv8s. With glibc's defaults,
//! blocks that large are mapped for each run and unmapped after it, or
//! trimmed off the heap's top, so every run faults its activations in page
//! by page again: on one core that was a quarter of calibration's time (7 s
//! of system time in 31 s). Keeping freed blocks in the heap makes a run
//! reuse the previous run's pages.
//!
//! Arenas are capped at one per 8 cores. glibc gives each new thread its
//! own arena, and a thread's arena lives in 64 MB heaps that are mapped and
//! dropped as activations come and go (faulted in again each time); with the
//! engine's pool threads next to rayon's, the fragmented arenas also made
//! peak RSS creep up with the number of samples (+16 % at 8× the data on
//! nudenet). On 2 cores, one arena took YOLOv8s calibration from 851 k page
//! faults to 577 k (system time 3.0 → 1.8 s, wall 14.6 → 13.0 s), while the
//! tract INT8 pipeline, whose threads allocate the most, stayed within noise
//! (11.6 vs 12.0 s). More cores keep more arenas so their threads do not all
//! wait on one lock.
//!
//! A setting the user made (`MALLOC_*_` variables, `GLIBC_TUNABLES`) rules.

/// Largest block served from the heap: glibc's upper limit for
/// `M_MMAP_THRESHOLD` on 64-bit (larger blocks are still mapped apart).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 32 << 20;

/// Free memory kept at a heap's top before it is given back.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: i32 = 1 << 30;

/// Applies the settings once per process, before the first session.
pub(crate) fn tune() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            let user_set = |var: &str| std::env::var_os(var).is_some();
            let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
            let set = |param: i32, value: i32, var: &str, tunable: &str| {
                if !user_set(var) && !tunables.contains(tunable) {
                    // SAFETY: mallopt only sets a malloc parameter; these are valid on glibc.
                    unsafe {
                        libc::mallopt(param, value);
                    }
                }
            };
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let arenas = i32::try_from(cores.div_ceil(8)).unwrap_or(i32::MAX);
            set(libc::M_ARENA_MAX, arenas, "MALLOC_ARENA_MAX", "malloc.arena_max");
            set(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_", "malloc.mmap_threshold");
            set(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_", "malloc.trim_threshold");
        }
    });
}
