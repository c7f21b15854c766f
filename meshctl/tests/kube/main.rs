//! Every kube-backed meshctl command against a recorded API server: a
//! tower-test mock behind a real `kube::Client` that plays an ordered
//! transcript of exchanges — the request meshctl must make (method, path and
//! query, content type, body) and what a real API server answers to it — and
//! records every request that does not match. Each test ends by asserting
//! the transcript was used up and nothing else was asked.

mod check;
mod export;
mod gateways;
mod install;
mod link;
mod objects;
mod prelude;
mod routes;
mod standin;
