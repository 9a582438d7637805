//! segmill.toml
