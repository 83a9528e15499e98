//! auth through its gRPC API as the gateway calls it, on the embedded engines: sign-up is
//! idempotent on its key; a wrong password and an unknown email get the same answer; tokens
//! introspect to their customer until they expire or the session ends; a refresh token is
//! spent once, and a spent one presented again (even twice at once) ends the session; what is
//! stored holds no password and no token in clear.

use std::time::Duration;

use auth::store::{AuthStore, Lifetimes};
use sterling_proto::auth::v1::auth_client::AuthClient;
use sterling_proto::auth::v1::{
    IntrospectRequest, RefreshRequest, Session, SignInRequest, SignOutRequest, SignUpRequest,
};
use sterling_storage::embedded::SqliteStore;
use sterling_storage::{Row, Store};
use sterling_template::client::GrpcChannel;
use sterling_template::platform::{self, Platform, PlatformConfig, RunningService};

const PASSWORD: &str = "correct horse battery";

fn code(status: tonic::Status) -> String {
    sterling_template::Error::from(status).code().to_string()
}

struct Auth {
    client: AuthClient<GrpcChannel>,
    running: RunningService,
    _dir: tempfile::TempDir,
}

async fn start(settings: &[(&str, &str)]) -> Auth {
    let dir = tempfile::tempdir().unwrap();
    let mut config = PlatformConfig::from_env().unwrap();
    config.data_dir = dir.path().to_path_buf();
    for (k, v) in settings {
        config.settings.insert(k.to_string(), v.to_string());
    }
    let platform = Platform::embedded(config).unwrap();
    let running = platform::start(&auth::SERVICE, &platform, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let channel = GrpcChannel::connect(platform.discovery.clone(), "auth", Duration::from_secs(5))
        .await
        .unwrap()
        .calling_as(&platform.identity, "gateway");
    Auth {
        client: AuthClient::new(channel),
        running,
        _dir: dir,
    }
}

fn sign_up(key: &str, email: &str, password: &str) -> SignUpRequest {
    SignUpRequest {
        idempotency_key: key.into(),
        email: email.into(),
        password: password.into(),
    }
}

fn sign_in(email: &str, password: &str) -> SignInRequest {
    SignInRequest {
        email: email.into(),
        password: password.into(),
    }
}

async fn introspect(
    client: &mut AuthClient<GrpcChannel>,
    session: &Session,
) -> Result<String, String> {
    client
        .introspect(IntrospectRequest {
            access_token: session.access_token.clone(),
        })
        .await
        .map(|p| p.into_inner().customer_id)
        .map_err(code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_up_is_idempotent_and_wrong_credentials_all_look_alike() {
    let mut auth = start(&[]).await;
    let client = &mut auth.client;
    let first = client
        .sign_up(sign_up("k1", " Ada@Example.com ", PASSWORD))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.email, "ada@example.com");
    let repeat = client
        .sign_up(sign_up("k1", "ada@example.com", PASSWORD))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(repeat, first, "a repeat answers the customer created");
    let taken = client
        .sign_up(sign_up("k2", "ada@example.com", "another password"))
        .await
        .unwrap_err();
    assert_eq!(code(taken), "conflict.email");
    for (request, expected) in [
        (sign_up("k3", "not-an-email", PASSWORD), "bad_request.email"),
        (
            sign_up("k3", "bob@example.com", "short"),
            "bad_request.password",
        ),
        (
            sign_up("k3", "bob@example.com", &"x".repeat(257)),
            "bad_request.password",
        ),
        (
            sign_up("", "bob@example.com", PASSWORD),
            "bad_request.idempotency_key",
        ),
    ] {
        assert_eq!(code(client.sign_up(request).await.unwrap_err()), expected);
    }

    let wrong = client
        .sign_in(sign_in("ada@example.com", "wrong password"))
        .await
        .unwrap_err();
    let unknown = client
        .sign_in(sign_in("nobody@example.com", PASSWORD))
        .await
        .unwrap_err();
    assert_eq!(wrong.message(), unknown.message());
    assert_eq!(code(wrong), "unauthorized.credentials");
    assert_eq!(code(unknown), "unauthorized.credentials");

    let session = client
        .sign_in(sign_in("ADA@example.com", PASSWORD))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(session.customer_id, first.customer_id);
    assert_eq!(
        introspect(client, &session).await,
        Ok(first.customer_id.clone())
    );
    for forged in ["", "sat_", "sat_00", "srt_whatever", &session.refresh_token] {
        let refused = client
            .introspect(IntrospectRequest {
                access_token: forged.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(code(refused), "unauthorized.token", "{forged:?}");
    }
    auth.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_tokens_are_spent_once_and_reuse_ends_the_session() {
    let mut auth = start(&[]).await;
    let client = &mut auth.client;
    client
        .sign_up(sign_up("k1", "cleo@example.com", PASSWORD))
        .await
        .unwrap();
    let first = client
        .sign_in(sign_in("cleo@example.com", PASSWORD))
        .await
        .unwrap()
        .into_inner();
    let refresh = |token: &str| RefreshRequest {
        refresh_token: token.into(),
    };
    let second = client
        .refresh(refresh(&first.refresh_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.session_id, first.session_id);
    assert_ne!(second.access_token, first.access_token);
    assert!(introspect(client, &second).await.is_ok());
    // The spent token again: refused, and the whole session ends.
    let reused = client
        .refresh(refresh(&first.refresh_token))
        .await
        .unwrap_err();
    assert_eq!(code(reused), "unauthorized.token");
    assert_eq!(
        introspect(client, &second).await,
        Err("unauthorized.token".into())
    );
    let after = client
        .refresh(refresh(&second.refresh_token))
        .await
        .unwrap_err();
    assert_eq!(code(after), "unauthorized.token");

    // The same refresh token twice at once: never two new sessions' worth of tokens.
    let fresh = client
        .sign_in(sign_in("cleo@example.com", PASSWORD))
        .await
        .unwrap()
        .into_inner();
    let (mut one, mut other) = (client.clone(), client.clone());
    let (a, b) = tokio::join!(
        one.refresh(refresh(&fresh.refresh_token)),
        other.refresh(refresh(&fresh.refresh_token)),
    );
    let won: Vec<Session> = [a, b]
        .into_iter()
        .filter_map(|r| r.ok())
        .map(|r| r.into_inner())
        .collect();
    assert!(won.len() <= 1, "a refresh token was spent twice");
    for session in &won {
        assert_eq!(
            introspect(client, session).await,
            Err("unauthorized.token".into()),
            "the race ended the session"
        );
    }
    auth.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_out_and_expiry_end_the_tokens() {
    let mut auth = start(&[("STERLING_AUTH_ACCESS_TTL_S", "1")]).await;
    let client = &mut auth.client;
    client
        .sign_up(sign_up("k1", "dee@example.com", PASSWORD))
        .await
        .unwrap();
    let session = client
        .sign_in(sign_in("dee@example.com", PASSWORD))
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        introspect(client, &session).await,
        Err("unauthorized.token".into())
    );
    let renewed = client
        .refresh(RefreshRequest {
            refresh_token: session.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(introspect(client, &renewed).await.is_ok());
    for _ in 0..2 {
        let out = client
            .sign_out(SignOutRequest {
                access_token: renewed.access_token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            out.session_id, session.session_id,
            "signing out is idempotent"
        );
    }
    assert_eq!(
        introspect(client, &renewed).await,
        Err("unauthorized.token".into())
    );
    let refused = client
        .refresh(RefreshRequest {
            refresh_token: renewed.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(code(refused), "unauthorized.token");
    auth.running.stop().await;
}

#[tokio::test]
async fn nothing_stored_is_a_password_or_a_token() {
    let store = std::sync::Arc::new(SqliteStore::in_memory(auth::MIGRATIONS).unwrap());
    let lifetimes = Lifetimes {
        access: Duration::from_secs(60),
        refresh: Duration::from_secs(600),
    };
    let auth = AuthStore::new(store.clone(), lifetimes);
    let hash = auth::passwords::hash(PASSWORD).await.unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(auth::passwords::verify(PASSWORD, &hash).await.unwrap());
    assert!(
        !auth::passwords::verify("wrong password", &hash)
            .await
            .unwrap()
    );
    let credential = auth.sign_up("k", "eve@example.com", &hash).await.unwrap();
    let session = auth.open_session(&credential.customer_id).await.unwrap();
    let rows = [
        ("credentials", Row::new().with("email", "eve@example.com")),
        (
            "sessions",
            Row::new().with("session_id", session.session_id.as_str()),
        ),
        (
            "access_tokens",
            Row::new().with("token_hash", auth::tokens::hash(&session.access_token)),
        ),
        (
            "refresh_tokens",
            Row::new().with("token_hash", auth::tokens::hash(&session.refresh_token)),
        ),
    ];
    let mut stored = String::new();
    for (table, key) in rows {
        let row = store.get(table, &key).await.unwrap();
        assert!(row.is_some(), "{table}");
        stored.push_str(&format!("{row:?}"));
    }
    assert!(!stored.contains(PASSWORD));
    assert!(!stored.contains(&session.access_token));
    assert!(!stored.contains(&session.refresh_token));
    assert!(stored.contains(&auth::tokens::hash(&session.access_token)));
}
