//! Certificates for the TLS tests, made with rcgen: a CA, a server certificate for
//! `localhost` and `127.0.0.1` signed by it, a client certificate signed by it, and a
//! second CA that signed nothing here (the "wrong CA"). Written as PEM files in a
//! directory of their own, removed when dropped.
#![allow(dead_code)] // each test crate uses part of it

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::unique::unique_name;

/// The client certificate's common name (PostgreSQL's `cert` login takes it as the
/// user's name).
pub(crate) const CLIENT_NAME: &str = "tak_client";

pub(crate) struct Pki {
    pub(crate) dir: PathBuf,
    pub(crate) ca_pem: String,
    pub(crate) server_cert_pem: String,
    pub(crate) server_key_pem: String,
    pub(crate) client_cert_pem: String,
    pub(crate) client_key_pem: String,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    common_name: &str,
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    pub(crate) fn new(label: &str) -> Self {
        let dir = std::env::temp_dir().join(unique_name(&format!("pki-{label}")));
        std::fs::create_dir_all(&dir).unwrap();
        let authority = ca("tower-api-key test CA");
        let (server_cert_pem, server_key_pem) = leaf(
            &authority,
            &["localhost", "127.0.0.1"],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert_pem, client_key_pem) = leaf(
            &authority,
            &[],
            CLIENT_NAME,
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let other = ca("some other CA");
        let pki = Self {
            dir,
            ca_pem: authority.pem(),
            server_cert_pem,
            server_key_pem,
            client_cert_pem,
            client_key_pem,
        };
        pki.write("ca.pem", &pki.ca_pem);
        pki.write("other-ca.pem", &other.pem());
        pki.write("server.pem", &pki.server_cert_pem);
        pki.write("server.key", &pki.server_key_pem);
        pki.write("client.pem", &pki.client_cert_pem);
        pki.write("client.key", &pki.client_key_pem);
        pki
    }

    fn write(&self, name: &str, text: &str) {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        // Keys readable by their owner only, as servers want them.
        #[cfg(unix)]
        if name.ends_with(".key") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The CA that signed the server's and the client's certificates.
    pub(crate) fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// A CA that signed neither.
    pub(crate) fn other_ca(&self) -> PathBuf {
        self.path("other-ca.pem")
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
