//! How an [`Error`] crosses a hop: a gRPC status whose code follows the class, with the exact
//! code, parameters and retryable flag in metadata; and what a storage error becomes.

use std::collections::BTreeMap;

use tonic::metadata::MetadataValue;

use super::{Error, ErrorClass};

/// Metadata key carrying the stable error code.
pub const ERROR_CODE_HEADER: &str = "sterling-error-code";
/// Metadata key carrying the error parameters as JSON.
pub const ERROR_PARAMS_HEADER: &str = "sterling-error-params";
/// Metadata key saying whether the call may be retried.
pub const ERROR_RETRYABLE_HEADER: &str = "sterling-error-retryable";

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let code = e.class().grpc_code();
        let mut status = tonic::Status::new(code, e.message.clone());
        let md = status.metadata_mut();
        if let Ok(v) = MetadataValue::try_from(e.code.as_str()) {
            md.insert(ERROR_CODE_HEADER, v);
        }
        if !e.params.is_empty()
            && let Ok(json) = serde_json::to_string(&e.params)
            && let Ok(v) = MetadataValue::try_from(json.as_str())
        {
            md.insert(ERROR_PARAMS_HEADER, v);
        }
        md.insert(
            ERROR_RETRYABLE_HEADER,
            MetadataValue::from_static(if e.retryable { "true" } else { "false" }),
        );
        status
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        let md = status.metadata();
        let header = |k: &str| md.get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
        let code = header(ERROR_CODE_HEADER)
            .unwrap_or_else(|| ErrorClass::from_grpc(status.code()).as_str().to_string());
        let mut error = Error::new(code, status.message());
        if let Some(params) = header(ERROR_PARAMS_HEADER)
            .and_then(|p| serde_json::from_str::<BTreeMap<String, String>>(&p).ok())
        {
            error.params = params;
        }
        if let Some(retryable) = header(ERROR_RETRYABLE_HEADER) {
            error.retryable = retryable == "true";
        }
        error
    }
}

impl From<sterling_storage::StorageError> for Error {
    fn from(e: sterling_storage::StorageError) -> Self {
        use sterling_storage::StorageError as S;
        let error = match &e {
            S::Unavailable(m) => Error::unavailable("storage", m.clone()),
            S::Invalid(m) | S::Schema(m) | S::Decode(m) => Error::internal(format!("storage: {m}")),
        };
        error.with_source(e)
    }
}
