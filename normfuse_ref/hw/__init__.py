"""The SIMD/DIMC machine (work in progress)."""
