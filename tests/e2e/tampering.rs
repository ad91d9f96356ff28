//! Tampering: verification names the first altered position and why.
