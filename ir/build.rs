//! Generates the ONNX protobuf types from `proto/onnx.proto` with protox (a
//! pure-Rust protobuf compiler), so building needs no `protoc` binary.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let fds = protox::compile(["proto/onnx.proto"], ["proto"])?;
    // Tensor bytes as `Bytes`: decoding from a `Bytes` buffer then slices it
    // instead of copying each tensor, and cloning a tensor (export does)
    // shares its data.
    prost_build::Config::new().bytes([".onnx.TensorProto.raw_data"]).compile_fds(fds)?;
    Ok(())
}
