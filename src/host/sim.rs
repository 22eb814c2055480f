//! Simulated kernel (being written).
