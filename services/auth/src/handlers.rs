//! gRPC handlers of auth.

use std::sync::OnceLock;

use sterling_proto::auth::v1::auth_server::Auth;
use sterling_proto::auth::v1::{
    Customer, IntrospectRequest, Principal, RefreshRequest, Session, SignInRequest, SignOutRequest,
    SignOutResponse, SignUpRequest,
};
use sterling_template::error::{printable_key, required_max};
use sterling_template::{Error, Result};
use tonic::{Request, Response, Status};

use crate::passwords;
use crate::store::{AuthStore, IssuedSession};

/// The auth gRPC service.
pub struct AuthHandlers {
    /// Credentials, sessions and tokens.
    pub store: AuthStore,
}

/// A lower-case email of plausible shape, or `bad_request.email`.
fn email(text: &str) -> Result<String> {
    let email = required_max("email", text.trim(), 254)?.to_ascii_lowercase();
    let plausible = email.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty() && domain.contains('.') && !domain.starts_with('.')
    }) && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if !plausible {
        return Err(Error::bad_request("email", "not an email address"));
    }
    Ok(email)
}

fn wrong_credentials() -> Error {
    Error::unauthorized("credentials", "the email or the password is wrong")
}

/// A hash no password matches, verified when an email is unknown so that the answer takes
/// about as long as for a known one.
async fn decoy_hash() -> Result<&'static str> {
    static DECOY: OnceLock<String> = OnceLock::new();
    if let Some(hash) = DECOY.get() {
        return Ok(hash);
    }
    let hash = passwords::hash(&crate::tokens::new_token("decoy_")).await?;
    Ok(DECOY.get_or_init(|| hash))
}

fn session_message(s: IssuedSession) -> Session {
    Session {
        customer_id: s.customer_id,
        session_id: s.session_id,
        access_token: s.access_token,
        access_expires_at_ms: s.access_expires_at_ms,
        refresh_token: s.refresh_token,
        refresh_expires_at_ms: s.refresh_expires_at_ms,
    }
}

#[tonic::async_trait]
impl Auth for AuthHandlers {
    async fn sign_up(&self, request: Request<SignUpRequest>) -> Result<Response<Customer>, Status> {
        let r = request.into_inner();
        let key = printable_key("idempotency_key", &r.idempotency_key)?;
        let email = email(&r.email)?;
        let hash = passwords::hash(passwords::checked(&r.password)?).await?;
        let credential = self.store.sign_up(key, &email, &hash).await?;
        tracing::info!(customer_id = %credential.customer_id, "customer signed up");
        Ok(Response::new(Customer {
            customer_id: credential.customer_id,
            email: credential.email,
        }))
    }

    async fn sign_in(&self, request: Request<SignInRequest>) -> Result<Response<Session>, Status> {
        let r = request.into_inner();
        let email = email(&r.email).map_err(|_| wrong_credentials())?;
        if passwords::too_long(&r.password) {
            return Err(wrong_credentials().into());
        }
        let credential = self.store.credential(&email).await?;
        let stored = match &credential {
            Some(c) => c.password_hash.as_str(),
            None => decoy_hash().await?,
        };
        let matches = passwords::verify(&r.password, stored).await?;
        let Some(credential) = credential.filter(|_| matches) else {
            tracing::info!("sign-in refused");
            return Err(wrong_credentials().into());
        };
        let session = self.store.open_session(&credential.customer_id).await?;
        tracing::info!(customer_id = %session.customer_id, session_id = %session.session_id, "signed in");
        Ok(Response::new(session_message(session)))
    }

    async fn refresh(&self, request: Request<RefreshRequest>) -> Result<Response<Session>, Status> {
        let r = request.into_inner();
        let session = self.store.refresh(&r.refresh_token).await?;
        Ok(Response::new(session_message(session)))
    }

    async fn sign_out(
        &self,
        request: Request<SignOutRequest>,
    ) -> Result<Response<SignOutResponse>, Status> {
        let r = request.into_inner();
        let session_id = self.store.sign_out(&r.access_token).await?;
        tracing::info!(session_id, "signed out");
        Ok(Response::new(SignOutResponse { session_id }))
    }

    async fn introspect(
        &self,
        request: Request<IntrospectRequest>,
    ) -> Result<Response<Principal>, Status> {
        let r = request.into_inner();
        let principal = self.store.introspect(&r.access_token).await?;
        Ok(Response::new(Principal {
            customer_id: principal.customer_id,
            session_id: principal.session_id,
            expires_at_ms: principal.expires_at_ms,
        }))
    }
}
