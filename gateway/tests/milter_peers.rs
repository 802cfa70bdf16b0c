//! Milter stages with the milters operators run, from Debian, started here on loopback
//! (tests/support/milters.rs): OpenDKIM signs and dkimpy verifies the signature (keys in a real
//! DNS server); clamav-milter refuses EICAR with its own reply and passes clean mail byte-exact;
//! rspamd's proxy refuses GTUBE and adds its headers to what it passes; two milters in one chain
//! beside each other.

mod support;

use support::clamd::{Clamd, EICAR};
use support::dkim_keys::{dkimpy_verify, Keys};
use support::dns_server::DnsServer;
use support::milters::{self, ClamavMilter, OpenDkimMilter, Rspamd};
use support::sink::SmtpSink;
use support::{message, Gateway, SmtpClient};

fn milter_stage(name: &str, address: &str) -> String {
    format!("[[stage]]\nname = \"{name}\"\nkind = \"milter\"\naddress = \"{address}\"\ntimeout = \"30s\"\n")
}

fn send(client: &mut SmtpClient, content: &[u8]) -> support::ClientReply {
    client.send_message("a@example.test", &["b@dest.test"], content)
}

fn with_body(subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: <a@example.test>\r\nTo: <b@dest.test>\r\nSubject: {subject}\r\nDate: Wed, 02 Dec 2026 12:00:00 +0000\r\n\
         Message-ID: <{}@example.test>\r\n\r\n{body}\r\n",
        subject.replace(' ', ".")
    )
    .into_bytes()
}

#[test]
fn opendkim_signs_and_dkimpy_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::openssl(dir.path());
    let dns = DnsServer::start("example.test", &[("s1._domainkey.example.test", &keys.rsa.record)]);
    for canonicalization in ["relaxed/simple", "simple/simple"] {
        let opendkim = OpenDkimMilter::start_with(&keys.rsa.pem, "example.test", "s1", canonicalization);
        let sink = SmtpSink::start(&[]);
        let gateway =
            Gateway::builder().relay_to(sink.port).section(&milter_stage("dkim", &opendkim.address())).start();
        let mut client = gateway.connect();
        client.hello();
        let folded = [
            b"From: <a@example.test>\r\nTo: <b@dest.test>,\r\n  <c@dest.test>\r\nSubject: a folded\r\n\tsubject\r\n"
                .as_slice(),
            b"Date: Wed, 02 Dec 2026 12:00:00 +0000\r\n\r\n",
            &b"a line of the body, long enough to span several chunks\r\n".repeat(2000),
        ]
        .concat();
        for content in [with_body("signed", "hello"), folded] {
            let reply = send(&mut client, &content);
            assert_eq!(reply.code, 250, "{canonicalization}: {}\n{}", reply.text(), opendkim.log());
        }
        let relayed = sink.wait_for_messages(2);
        let paths: Vec<_> = relayed
            .iter()
            .enumerate()
            .map(|(n, m)| {
                let text = String::from_utf8_lossy(&m.data);
                assert!(text.starts_with("DKIM-Signature: v=1; a=rsa-sha256;"), "{canonicalization}: {}", &text[..300]);
                assert!(text.contains(&format!("c={canonicalization};")), "{}", &text[..300]);
                let path = dir.path().join(format!("{}-{n}.eml", canonicalization.replace('/', "-")));
                std::fs::write(&path, &m.data).unwrap();
                path
            })
            .collect();
        assert_eq!(dkimpy_verify(&dns, &paths), vec!["pass", "pass"], "{canonicalization}\n{}", opendkim.log());
    }
}

#[test]
fn clamav_milter_refuses_eicar_with_its_own_reply_and_passes_clean_mail_byte_exact() {
    let clamd = Clamd::start("64M");
    let milter = ClamavMilter::start_with(&clamd, false);
    let gateway = Gateway::builder().section(&milter_stage("antivirus", &milter.address())).start();
    let mut client = gateway.connect();
    client.hello();
    let clean = message("clean", 300_000);
    assert_eq!(send(&mut client, &clean).code, 250);
    assert_eq!(gateway.delivered(), vec![clean], "clean mail byte-exact");
    let infected = [b"Subject: infected\r\n\r\nbefore\r\n".as_slice(), EICAR, b"\r\nafter\r\n"].concat();
    let reply = send(&mut client, &infected);
    assert_eq!(reply.code, 550, "{}\n{}", reply.text(), milter.log());
    let own = milters::CLAMAV_REJECT_MSG.replace("%v", milters::EICAR_VIRUS);
    assert!(reply.text().contains(&format!("5.7.1 {own}")), "the milter's own reply: {}", reply.text());
    assert_eq!(gateway.delivered().len(), 1);
    // With its headers on, clean mail is tagged by the milter's own changes.
    let tagging = ClamavMilter::start_with(&clamd, true);
    let gateway = Gateway::builder().section(&milter_stage("antivirus", &tagging.address())).start();
    let mut client = gateway.connect();
    client.hello();
    assert_eq!(send(&mut client, &with_body("tagged", "fine")).code, 250);
    let delivered = String::from_utf8_lossy(&gateway.delivered()[0]).to_string();
    assert!(delivered.contains("X-Virus-Status: Clean\r\n"), "{delivered}");
    assert!(delivered.contains("X-Virus-Scanned: clamav-milter"), "{delivered}");
}

#[test]
fn rspamd_refuses_gtube_and_adds_its_headers() {
    let clamd = Clamd::start("64M");
    let rspamd = Rspamd::start(Some(&clamd));
    let gateway = Gateway::builder().section(&milter_stage("rspamd", &rspamd.address())).start();
    let mut client = gateway.connect();
    client.hello();
    let reply = send(&mut client, &with_body("gtube", milters::GTUBE));
    assert_eq!(reply.text().trim(), milters::RSPAMD_GTUBE_REPLY, "{}", rspamd.log());
    let reply = send(&mut client, &with_body("virus", std::str::from_utf8(EICAR).unwrap()));
    assert_eq!(reply.code, 554, "{}", reply.text());
    assert!(reply.text().contains(milters::EICAR_VIRUS), "{}", reply.text());
    assert_eq!(send(&mut client, &with_body("ham", "an ordinary message")).code, 250);
    let rewritten = with_body("offer", milters::GTUBE_REWRITE_SUBJECT);
    assert_eq!(send(&mut client, &rewritten).code, 250);
    let delivered: Vec<String> = gateway.delivered().iter().map(|m| String::from_utf8_lossy(m).to_string()).collect();
    assert_eq!(delivered.len(), 2, "only the ham and the tagged message are delivered");
    for header in ["X-Spamd-Result: default: False", "X-Rspamd-Action: no action", "X-Rspamd-Queue-Id: "] {
        assert!(delivered[0].contains(header), "{header}: {}", delivered[0]);
    }
    assert!(delivered[1].contains("Subject: *** SPAM *** offer\r\n"), "{}", delivered[1]);
    // The queue id rspamd saw is the transaction's, as its log line names it.
    let id = delivered[0].split("X-Rspamd-Queue-Id: ").nth(1).unwrap().split("\r\n").next().unwrap().to_string();
    gateway.wait_for_log(&format!("transaction=\"{id}\""));
}

#[test]
fn two_milters_in_one_chain() {
    let clamd = Clamd::start("64M");
    let antivirus = ClamavMilter::start_with(&clamd, true);
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::openssl(dir.path());
    let dns = DnsServer::start("example.test", &[("s1._domainkey.example.test", &keys.rsa.record)]);
    let opendkim = OpenDkimMilter::start(&keys.rsa.pem, "example.test", "s1");
    let gateway = Gateway::builder()
        .section(&milter_stage("antivirus", &antivirus.address()))
        .section(&milter_stage("dkim", &opendkim.address()))
        .start();
    let mut client = gateway.connect();
    client.hello();
    assert_eq!(send(&mut client, &with_body("both", "scanned, then signed")).code, 250);
    let infected = with_body("infected", std::str::from_utf8(EICAR).unwrap());
    assert_eq!(send(&mut client, &infected).code, 550);
    let delivered = gateway.delivered();
    assert_eq!(delivered.len(), 1);
    let text = String::from_utf8_lossy(&delivered[0]).to_string();
    assert!(text.contains("X-Virus-Status: Clean") && text.starts_with("DKIM-Signature:"), "{text}");
    let path = dir.path().join("both.eml");
    std::fs::write(&path, &delivered[0]).unwrap();
    assert_eq!(dkimpy_verify(&dns, &[path]), vec!["pass"], "{}", opendkim.log());
}
