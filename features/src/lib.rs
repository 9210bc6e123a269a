//! The feature pipeline: one implementation of every feature, shared by training and serving.
//!
//! Empty on purpose for now: the feature pipeline issue fills it with Polars expressions.
