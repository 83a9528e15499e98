//! Headers from the network take any text and give a value or nothing, never a panic.

use proptest::prelude::*;
use sterling_template::context::{TraceContext, parse_grpc_timeout};
use sterling_template::error::Error;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn traceparent_headers_parse_or_are_refused(header in ".{0,120}") {
        if let Some(t) = TraceContext::parse(&header) {
            prop_assert_eq!(t.trace_id.len(), 32);
            prop_assert_eq!(t.span_id.len(), 16);
            prop_assert_eq!(TraceContext::parse(&t.header()), Some(t));
        }
    }

    #[test]
    fn grpc_timeouts_parse_or_are_refused(header in ".{0,12}") {
        let _ = parse_grpc_timeout(&header);
    }

    #[test]
    fn error_metadata_from_the_wire_never_panics(code in ".{0,40}", params in ".{0,80}", message in ".{0,80}") {
        let mut status = tonic::Status::unavailable(message);
        if let Ok(v) = code.parse() {
            status.metadata_mut().insert(sterling_template::error::ERROR_CODE_HEADER, v);
        }
        if let Ok(v) = params.parse() {
            status.metadata_mut().insert(sterling_template::error::ERROR_PARAMS_HEADER, v);
        }
        let _ = Error::from(status);
    }
}
