//! The `openai` provider: any upstream speaking OpenAI's HTTP API (OpenAI, DeepSeek, Qwen
//! compatible mode, vLLM, …). The prepared body is sent as it is; the response body is streamed
//! back untouched. Spec: <https://platform.openai.com/docs/api-reference/chat>.

use super::{UpstreamError, UpstreamResponse};
use crate::gateway::catalog::Channel;
use futures_util::StreamExt;
use std::time::Duration;

/// POSTs `body` to `{base_url}/{path}` and waits up to `first_byte_timeout` for the headers.
pub async fn post(
    http: &reqwest::Client,
    channel: &Channel,
    path: &str,
    body: Vec<u8>,
    first_byte_timeout: Duration,
) -> Result<UpstreamResponse, UpstreamError> {
    let url = format!("{}/{}", channel.base_url, path);
    let mut request = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body);
    if !channel.api_key.is_empty() {
        request = request.bearer_auth(&channel.api_key);
    }
    let response = match tokio::time::timeout(first_byte_timeout, request.send()).await {
        Err(_) => return Err(UpstreamError::Timeout(first_byte_timeout.as_millis() as u64)),
        Ok(Err(e)) if e.is_connect() => return Err(UpstreamError::Connect(e.to_string())),
        Ok(Err(e)) if e.is_timeout() => {
            return Err(UpstreamError::Timeout(first_byte_timeout.as_millis() as u64));
        }
        Ok(Err(e)) => return Err(UpstreamError::Other(e.to_string())),
        Ok(Ok(r)) => r,
    };
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response
        .bytes_stream()
        .map(|r| r.map_err(|e| UpstreamError::Other(e.to_string())))
        .boxed();
    Ok(UpstreamResponse {
        status,
        content_type,
        body,
    })
}
