//! The `aws-account-worker` binary as operators run it: configuration errors exit 2 naming the
//! key; SIGTERM exits 0; no secret ever reaches the logs.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_credential_types::provider::ProvideCredentials;

use crate::support::{BIN, ClosedPort, TestEnv, WorkerProcess, moto_endpoint, order, write_config};

/// Runs the binary to completion with a deadline; returns (exit code, stderr).
fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_REGION", "us-east-1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn worker binary");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the binary did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    (status.code(), stderr)
}

#[test]
fn configuration_errors_exit_2_naming_the_key() {
    let valid = "[business_model]\nprovider_email_domain = \"provider.example\"\n";
    let zero_prefetch = write_config(&format!("{valid}[amqp]\nprefetch = 0\n"));
    let typo = write_config(&format!("{valid}[retry]\nmax_atempts = 3\n"));
    let ok = write_config(valid);
    let no_domain = write_config("[amqp]\nprefetch = 4\n");
    let unknown_payer = write_config(&format!(
        "{valid}[marketplaces.\"MP-1\"]\nmulti_payer = true\n[marketplaces.\"MP-1\".opcos.\"TA-1\"]\npayer = \"opco\"\n"
    ));
    let path = |f: &tempfile::NamedTempFile| f.path().to_str().expect("utf-8 path").to_owned();
    // (arguments, environment, the key the message must name)
    type Case<'a> = (Vec<String>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            vec!["--config".into(), path(&zero_prefetch), "run".into()],
            vec![],
            "amqp.prefetch",
        ),
        (
            vec!["--config".into(), path(&typo), "run".into()],
            vec![],
            "retry.max_atempts",
        ),
        (
            vec!["--config".into(), path(&ok), "run".into()],
            vec![("WORKER__RETRY__MAX_ATTEMPTS", "many")],
            "max_attempts",
        ),
        (
            vec!["--config".into(), path(&ok), "run".into()],
            vec![("WORKER__AMQP__URL", "http://nope")],
            "amqp.url",
        ),
        (
            vec!["--config".into(), path(&no_domain), "run".into()],
            vec![],
            "business_model.provider_email_domain",
        ),
        (
            vec!["--config".into(), path(&unknown_payer), "run".into()],
            vec![],
            "marketplaces.\"MP-1\".opcos.\"TA-1\".payer",
        ),
        (
            vec!["--config".into(), path(&ok), "check".into()],
            vec![("WORKER__PAYERS__DEFAULT__ROLE_ARN", "AccountVending")],
            "payers.default.role_arn",
        ),
        (
            vec![
                "--config".into(),
                "/nonexistent/worker.toml".into(),
                "run".into(),
            ],
            vec![],
            "--config",
        ),
        (
            vec!["--config".into(), path(&ok), "run".into()],
            vec![("WORKER__CONNECTIONS__TEST", "sandbox")],
            "connections.test",
        ),
        (
            vec![
                "--config".into(),
                path(&ok),
                "explain".into(),
                "order.json".into(),
            ],
            vec![("WORKER__CONNECTIONS__PREVIEW", "nobody")],
            "connections.preview",
        ),
        (
            vec!["--log-format".into(), "xml".into(), "run".into()],
            vec![],
            "--log-format",
        ),
        (vec!["fly".into()], vec![], "fly"),
    ];
    for (args, env, key) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, stderr) = run_to_exit(&args, &env);
        assert_eq!(code, Some(2), "{args:?} {env:?}: {stderr}");
        assert!(
            stderr.contains(key),
            "{args:?} {env:?}: the message names `{key}`: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_reach_the_logs_and_sigterm_exits_0() {
    let mut env = TestEnv::new("").await;
    let config = write_config(&env.toml);
    let credentials = env
        .payer
        .credentials
        .provide_credentials()
        .await
        .expect("payer credentials");
    let session_token = credentials
        .session_token()
        .expect("session token")
        .to_owned();
    let secret_key = credentials.secret_access_key().to_owned();
    let mut worker = WorkerProcess::spawn_traced(&env, &config, &moto_endpoint()).await;

    let iam_order = order(&[], &[]);
    env.publish_json(&iam_order).await;
    let event = env.next_event().await;
    assert_eq!(event["event"], "aws.account.provisioned", "{event}");
    let password = event["access"]["initial_password"]
        .as_str()
        .expect("password")
        .to_owned();

    worker.signal("TERM");
    let grace = Duration::from_secs(env.settings.worker.shutdown_grace_seconds + 10);
    let code = worker.exit(grace).await;
    assert_eq!(code, Some(0), "SIGTERM exits 0");

    let logs = std::fs::read_to_string(worker.logs.path()).expect("read logs");
    assert!(
        logs.contains("order provisioned"),
        "the logs are captured: {}",
        &logs[..logs.len().min(2000)]
    );
    assert!(
        logs.contains(event["request_id"].as_str().expect("request id")),
        "spans carry the request id"
    );
    let amqp_password = "guest:guest";
    for (what, secret) in [
        ("the IAM password", password.as_str()),
        ("the AWS secret key", secret_key.as_str()),
        ("the AWS session token", session_token.as_str()),
        ("the broker password", amqp_password),
    ] {
        assert!(!logs.contains(secret), "{what} appears in the logs");
    }
    env.cleanup().await;
}

#[test]
fn help_lists_the_environment_and_examples() {
    let output = Command::new(BIN)
        .arg("--help")
        .output()
        .expect("run --help");
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    for part in [
        "WORKER__SECTION__KEY",
        "WORKER__AMQP__URL",
        "AWS_REGION",
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "RUST_LOG",
        "NO_COLOR",
        "Examples:",
        "check --format json",
    ] {
        assert!(help.contains(part), "--help names {part}:\n{help}");
    }
    for (command, part) in [("check", "--format <FORMAT>"), ("replay", "--format json")] {
        let output = Command::new(BIN)
            .args([command, "--help"])
            .output()
            .expect("run <command> --help");
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(
            help.contains(part),
            "{command} --help names {part}:\n{help}"
        );
    }
}

#[test]
fn logs_written_to_a_pipe_carry_no_colour_codes() {
    // The broker is unreachable: the worker logs that it serves its endpoints and that it is
    // still trying to connect, then it is stopped.
    let closed_socket = ClosedPort::new();
    let closed = closed_socket.port;
    let config = write_config(&format!(
        "[business_model]\nprovider_email_domain = \"provider.example\"\n\
         [amqp]\nurl = \"amqp://guest:guest@127.0.0.1:{closed}/%2f\"\n\
         [observability]\nlisten = \"127.0.0.1:0\"\n"
    ));
    let mut child = Command::new(BIN)
        .args(["--config", config.path().to_str().expect("path"), "run"])
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_REGION", "us-east-1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn worker binary");
    let stderr = child.stderr.take().expect("stderr");
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut logged = Vec::new();
    while !logged
        .iter()
        .any(|l: &String| l.contains("not reachable yet"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match seen.recv_timeout(left) {
            Ok(line) => logged.push(line),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let logged = logged.join("\n");
    assert!(
        logged.contains("serving /metrics") && logged.contains("not reachable yet"),
        "the worker logged: {logged}"
    );
    assert!(
        !logged.contains('\u{1b}'),
        "no ANSI escape codes: {logged:?}"
    );
}
