//! The ONNX protobuf messages, generated at build time from
//! `proto/onnx.proto` by prost (see `build.rs`).
//!
//! Only `ir` touches these types; everything above it works on [`crate::Graph`].

#![allow(missing_docs, clippy::all)]

include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
