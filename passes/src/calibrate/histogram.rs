//! Streaming histograms of |x| and the amax methods (being written).
