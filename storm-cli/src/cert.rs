//! `storm cert`: a development CA and a server certificate it signed, as
//! PEM files every `storm` server (`--tls CERT_PEM KEY_PEM`) and client
//! (`--tls-ca CA_PEM`) takes.
//!
//! Why a CA and a leaf, not one self-signed certificate: rustls (through
//! webpki) accepts as a server's own certificate only an end-entity
//! certificate (basic constraints `CA:FALSE`) that carries the server's
//! name in its subjectAltName, and trusts only CA certificates as roots.
//! One self-signed certificate cannot be both, and the one most people make
//! first (`openssl req -x509 … -subj /CN=localhost`) is a CA certificate
//! without a subjectAltName, refused with `CaUsedAsEndEntity`.
//!
//! The CA's private key is not written anywhere: the CA exists to sign this
//! one server certificate, and a CA key left on disk would let whoever
//! reads it mint certificates for any name that every client trusting
//! `ca.pem` (a browser it was imported into, say) would accept. To cover
//! other names, run `storm cert` again (`--force`): a new CA, a new leaf.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use storm_host::options::TlsClientOptions;

/// Names the server certificate always carries: what a client on the same
/// machine connects to.
const LOCAL_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// How long the certificates are valid, from the moment they are made.
const VALID_FOR: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// How far back their validity starts, for clocks a little behind.
const BACKDATE: Duration = Duration::from_secs(24 * 60 * 60);

/// The CA certificate (clients trust it).
const CA_FILE: &str = "ca.pem";
/// The server's certificate, signed by the CA.
const CERT_FILE: &str = "cert.pem";
/// The server's private key.
const KEY_FILE: &str = "key.pem";

/// Options of `storm cert`.
#[derive(Debug, clap::Args)]
pub(crate) struct CertArgs {
    /// Directory to write ca.pem, cert.pem and key.pem into (created if
    /// missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Another name the server certificate is valid for: a DNS name or an
    /// IP address (repeat for several). localhost, 127.0.0.1 and ::1 always
    /// are.
    #[arg(long = "name", value_name = "NAME")]
    names: Vec<String>,
    /// Replace ca.pem, cert.pem and key.pem if they exist (without it,
    /// existing files are left alone and nothing is written).
    #[arg(long)]
    force: bool,
}

/// The PEM files `storm cert` writes.
struct Issued {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
    /// Last day of validity, `YYYY-MM-DD` (UTC).
    valid_until: String,
}

/// Runs `storm cert`: writes the files and prints how to use them.
pub(crate) fn run(args: &CertArgs) -> io::Result<()> {
    let names = server_names(&args.names)?;
    let paths = [CA_FILE, CERT_FILE, KEY_FILE].map(|file| args.out.join(file));
    if !args.force {
        if let Some(existing) = paths.iter().find(|path| path.exists()) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} already exists: nothing written (--force replaces ca.pem, cert.pem and \
                     key.pem; clients must then trust the new ca.pem)",
                    existing.display()
                ),
            ));
        }
    }
    let issued =
        issue(&names).map_err(|e| io::Error::other(format!("making certificates: {e}")))?;
    fs::create_dir_all(&args.out)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", args.out.display())))?;
    let [ca, cert, key] = &paths;
    write(ca, &issued.ca_pem, args.force, false)?;
    write(cert, &issued.cert_pem, args.force, false)?;
    write(key, &issued.key_pem, args.force, true)?;
    print!("{}", usage(&names, &issued.valid_until, ca, cert, key));
    Ok(())
}

/// The server certificate's names: the local ones, then `extra`, each once,
/// each a name a client can connect with (a DNS name or an IP address).
fn server_names(extra: &[String]) -> io::Result<Vec<String>> {
    let mut names: Vec<String> = LOCAL_NAMES.iter().map(|&name| name.to_owned()).collect();
    for name in extra {
        // IPv6 in brackets, as in a URL, is the address.
        let bare = name
            .strip_prefix('[')
            .and_then(|inner| inner.strip_suffix(']'))
            .unwrap_or(name);
        // The same check every client makes of the name it connects to.
        storm_host::tls::server_name(&TlsClientOptions::default(), bare).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("--name {name:?} is neither a DNS name nor an IP address"),
            )
        })?;
        if !names.iter().any(|known| known.eq_ignore_ascii_case(bare)) {
            names.push(bare.to_owned());
        }
    }
    Ok(names)
}

/// A fresh CA, and a server certificate for `names` that it signed. The
/// CA's key is dropped here (see the module docs).
fn issue(names: &[String]) -> Result<Issued, rcgen::Error> {
    let now = SystemTime::now();
    let not_before = now.checked_sub(BACKDATE).unwrap_or(now).into();
    let not_after = now.checked_add(VALID_FOR).unwrap_or(now).into();

    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "storm development CA");
    // It signs server certificates, never another CA.
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;

    let mut leaf = CertificateParams::new(names.to_vec())?;
    leaf.distinguished_name.push(
        DnType::CommonName,
        names.first().map_or("localhost", String::as_str),
    );
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = not_before;
    leaf.not_after = not_after;
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &ca)?;
    Ok(Issued {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        valid_until: leaf.not_after.date().to_string(),
    })
}

/// Writes `contents` to `path`: only a new file unless `replace`; a
/// `secret` readable by its owner alone (on Unix).
fn write(path: &Path, contents: &str, replace: bool, secret: bool) -> io::Result<()> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let mut options = OpenOptions::new();
    options.write(true);
    if replace {
        options.create(true).truncate(true);
    } else {
        // Fails if the file appeared since the check: never overwritten.
        options.create_new(true);
    }
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(named)?;
    #[cfg(unix)]
    if secret {
        // A replaced file keeps its old mode through `open`.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(named)?;
    }
    file.write_all(contents.as_bytes()).map_err(named)?;
    file.sync_all().map_err(named)
}

/// What `storm cert` prints: the files, and commands that use them.
fn usage(names: &[String], valid_until: &str, ca: &Path, cert: &Path, key: &Path) -> String {
    let (ca, cert, key) = (quoted(ca), quoted(cert), quoted(key));
    format!(
        "storm cert: a development CA and a server certificate it signed, valid until \
         {valid_until} for {names}\n\
         \x20 {ca}  the CA certificate: clients trust it (--tls-ca); its key was not kept, \
         so it signs nothing else\n\
         \x20 {cert}  the server's certificate (leaf, signed by the CA)\n\
         \x20 {key}  the server's private key\n\
         \n\
         Serve and connect (every storm server takes --tls CERT_PEM KEY_PEM, every client \
         --tls-ca CA_PEM):\n\
         \x20 storm echo --proto ws --tls {cert} {key}\n\
         \x20 storm client ws wss://localhost:9001/ --tls-ca {ca}\n\
         \n\
         \x20 storm echo --proto line --tls {cert} {key}\n\
         \x20 storm client tcp tls://localhost:9001 --proto line --tls-ca {ca}\n",
        names = names.join(", "),
    )
}

/// `path` as a shell word: as it is when that is safe, else single-quoted.
fn quoted(path: &Path) -> String {
    let text = path.display().to_string();
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@%,=".contains(&b));
    if plain {
        text
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_local_ones_then_the_extra_ones_once() {
        let extra = [
            "example.test",
            "LOCALHOST",
            "[fd00::1]",
            "10.0.0.7",
            "example.test",
        ]
        .map(str::to_owned);
        assert_eq!(
            server_names(&extra).unwrap(),
            [
                "localhost",
                "127.0.0.1",
                "::1",
                "example.test",
                "fd00::1",
                "10.0.0.7"
            ]
        );
        let err = server_names(&["not a name!".to_owned()]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("--name \"not a name!\""), "{err}");
    }

    #[test]
    fn the_leaf_is_an_end_entity_and_the_server_takes_it() {
        let issued = issue(&server_names(&[]).unwrap()).unwrap();
        let options = storm_host::options::TlsServerOptions::new(
            issued.cert_pem.clone(),
            issued.key_pem.clone(),
        );
        assert!(storm_host::tls::server_config(&options).is_ok());
        assert!(storm_host::tls::client_config(&TlsClientOptions::with_ca(issued.ca_pem)).is_ok());
        assert!(issued.key_pem.contains("PRIVATE KEY"));
        assert_eq!(issued.valid_until.len(), "2027-01-01".len());
    }

    #[test]
    fn paths_that_need_it_are_quoted() {
        assert_eq!(quoted(Path::new("certs/ca.pem")), "certs/ca.pem");
        assert_eq!(quoted(Path::new("my certs/ca.pem")), "'my certs/ca.pem'");
        assert_eq!(quoted(Path::new("it's/ca.pem")), r"'it'\''s/ca.pem'");
    }
}
