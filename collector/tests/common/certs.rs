//! Certificates made by the tests: CAs, server and client leaves, written as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

pub struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

pub fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A leaf certificate and key signed by `ca`, as PEM: CN = `names[0]`, every name a SAN.
pub fn leaf(ca: &Ca, names: &[&str], purpose: ExtendedKeyUsagePurpose) -> (String, String) {
    leaf_with_groups(ca, names, &[], purpose)
}

/// Like [`leaf`], with organizations (Kubernetes reads them as groups).
pub fn leaf_with_groups(
    ca: &Ca,
    names: &[&str],
    organizations: &[&str],
    purpose: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, names[0]);
    for o in organizations {
        params.distinguished_name.push(DnType::OrganizationName, *o);
    }
    params.extended_key_usages.push(purpose);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

pub fn write(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path
}

/// A client certificate's files.
#[derive(Clone)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A client certificate from `ca` for `user` in `groups`, written to `dir`.
pub fn client_cert(dir: &Path, ca: &Ca, user: &str, groups: &[&str]) -> ClientCert {
    let (cert, key) = leaf_with_groups(ca, &[user], groups, ExtendedKeyUsagePurpose::ClientAuth);
    let file = user.replace(':', "_");
    ClientCert {
        cert: write(dir, &format!("{file}.crt"), &cert),
        key: write(dir, &format!("{file}.key"), &key),
    }
}
