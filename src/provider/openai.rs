//! The `openai` provider: any upstream speaking OpenAI's HTTP API (OpenAI, DeepSeek, Qwen
//! compatible mode, vLLM, …). The prepared body is sent as it is; the response body is streamed
//! back untouched. Spec: <https://platform.openai.com/docs/api-reference/chat>.

use super::Channel;
use super::{UpstreamError, UpstreamResponse};
use std::time::Duration;

/// POSTs `body` to `{base_url}/{path}` and waits up to `first_byte_timeout` for the headers.
pub async fn post(
    http: &reqwest::Client,
    channel: &Channel,
    path: &str,
    body: Vec<u8>,
    first_byte_timeout: Duration,
) -> Result<UpstreamResponse, UpstreamError> {
    let request = channel.post_json(http, path, body);
    let response = super::send(request, first_byte_timeout).await?;
    Ok(UpstreamResponse::from_reqwest(response))
}
