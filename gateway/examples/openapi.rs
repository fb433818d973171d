//! Prints the OpenAPI document the gateway serves at `/openapi.json`, without starting a mesh:
//! `cargo run -p palisade-gateway --example openapi > openapi.json` (e.g. to generate a client).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = palisade_proto::descriptor_pool();
    let policies = palisade_grpc::MethodPolicies::from_pool(pool)?;
    let document = palisade_gateway::rest::openapi::document(pool, &policies)?;
    println!("{}", serde_json::to_string_pretty(&document)?);
    Ok(())
}
