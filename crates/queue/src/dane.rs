//! DANE for SMTP (RFC 7672): a server's certificate checked against the TLSA records of its
//! MX host, published in a DNSSEC-signed zone ([`crate::dnssec`]).
//!
//! Only DANE-TA(2) and DANE-EE(3) are usable for SMTP (RFC 7672 3.1.3: PKIX-TA and PKIX-EE
//! records are treated as unusable), with selectors Cert(0) and SPKI(1) and matching types
//! Full(0), SHA2-256(1) and SHA2-512(2).

use std::sync::Arc;

use hickory_resolver::proto::rr::RData;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// One usable TLSA record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    /// 2 (DANE-TA) or 3 (DANE-EE).
    pub usage: u8,
    /// 0: the whole certificate; 1: its SubjectPublicKeyInfo.
    pub selector: u8,
    /// 0: the data itself; 1: SHA-256; 2: SHA-512.
    pub matching: u8,
    /// What is matched.
    pub data: Vec<u8>,
}

impl Tlsa {
    /// The usable records of a TLSA RRset (RFC 7672 2.2: the others are ignored).
    pub fn usable(records: &[RData]) -> Vec<Tlsa> {
        records
            .iter()
            .filter_map(|r| match r {
                RData::TLSA(t) => Some(Tlsa {
                    usage: t.cert_usage().into(),
                    selector: t.selector().into(),
                    matching: t.matching().into(),
                    data: t.cert_data().to_vec(),
                }),
                _ => None,
            })
            .filter(|t| matches!(t.usage, 2 | 3) && t.selector <= 1 && t.matching <= 2)
            .collect()
    }

    /// Whether this record matches a certificate.
    pub fn matches(&self, cert: &CertificateDer<'_>) -> bool {
        let content: Vec<u8> = match self.selector {
            0 => cert.as_ref().to_vec(),
            _ => match webpki::EndEntityCert::try_from(cert) {
                Ok(c) => c.subject_public_key_info().as_ref().to_vec(),
                Err(_) => return false,
            },
        };
        match self.matching {
            0 => content == self.data,
            1 => ring::digest::digest(&ring::digest::SHA256, &content).as_ref() == self.data,
            _ => ring::digest::digest(&ring::digest::SHA512, &content).as_ref() == self.data,
        }
    }
}

/// Checks a server's certificate chain against TLSA records.
#[derive(Debug)]
pub struct DaneVerifier {
    tlsa: Vec<Tlsa>,
    /// Reference identifiers for DANE-TA (RFC 7672 3.2.2): the MX host, then the domain.
    names: Vec<String>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl DaneVerifier {
    /// A client TLS configuration that accepts only a server matching `tlsa`.
    pub fn config(
        tlsa: Vec<Tlsa>,
        names: Vec<String>,
    ) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = DaneVerifier {
            tlsa,
            names,
            provider: provider.clone(),
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// DANE-TA: a certificate the server sent is the trust anchor; the chain from the
    /// server's certificate to it must be valid, for one of the reference names.
    fn verify_ta(
        &self,
        t: &Tlsa,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> bool {
        for anchor in intermediates.iter().filter(|c| t.matches(c)) {
            let mut roots = rustls::RootCertStore::empty();
            if roots.add(anchor.clone().into_owned()).is_err() {
                continue;
            }
            let Ok(verifier) = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                self.provider.clone(),
            )
            .build() else {
                continue;
            };
            for name in &self.names {
                let Ok(name) = ServerName::try_from(name.clone()) else {
                    continue;
                };
                if verifier
                    .verify_server_cert(end_entity, intermediates, &name, &[], now)
                    .is_ok()
                {
                    return true;
                }
            }
        }
        false
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        for t in &self.tlsa {
            let ok = match t.usage {
                // RFC 7672 3.1.1: DANE-EE matches the server's own certificate or key; its
                // names and validity dates are not checked.
                3 => t.matches(end_entity),
                // RFC 7672 3.1.2: DANE-TA names a trust anchor the server must send.
                _ => self.verify_ta(t, end_entity, intermediates, now),
            };
            if ok {
                return Ok(ServerCertVerified::assertion());
            }
        }
        Err(rustls::Error::General(
            "no DANE TLSA record matches the server's certificate chain".into(),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

    struct Chain {
        ca: CertificateDer<'static>,
        leaf: CertificateDer<'static>,
        leaf_spki: Vec<u8>,
    }

    fn chain(name: &str) -> Chain {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.clone().self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, &ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        Chain {
            ca: ca.der().clone(),
            leaf: leaf.der().clone(),
            leaf_spki: rcgen::PublicKeyData::subject_public_key_info(&leaf_key),
        }
    }

    fn verify(v: &DaneVerifier, c: &Chain) -> bool {
        v.verify_server_cert(
            &c.leaf,
            std::slice::from_ref(&c.ca),
            &ServerName::try_from("ignored.test").unwrap(),
            &[],
            UnixTime::now(),
        )
        .is_ok()
    }

    fn verifier(tlsa: Vec<Tlsa>, names: &[&str]) -> DaneVerifier {
        DaneVerifier {
            tlsa,
            names: names.iter().map(|n| n.to_string()).collect(),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
    }

    fn sha256(b: &[u8]) -> Vec<u8> {
        ring::digest::digest(&ring::digest::SHA256, b)
            .as_ref()
            .to_vec()
    }

    #[test]
    fn dane_ee_matches_the_key_or_the_certificate_whatever_its_names() {
        let c = chain("mx.other.test");
        let other = chain("mx.example.test");
        for (selector, matching, data) in [
            (1, 1, sha256(&c.leaf_spki)),
            (0, 1, sha256(&c.leaf)),
            (0, 0, c.leaf.to_vec()),
            (
                1,
                2,
                ring::digest::digest(&ring::digest::SHA512, &c.leaf_spki)
                    .as_ref()
                    .to_vec(),
            ),
        ] {
            let t = Tlsa {
                usage: 3,
                selector,
                matching,
                data,
            };
            let v = verifier(vec![t], &["mx.example.test"]);
            assert!(verify(&v, &c), "3 {selector} {matching} matches");
            assert!(!verify(&v, &other), "3 {selector} {matching}: another key");
        }
    }

    #[test]
    fn dane_ta_needs_the_anchor_in_the_chain_and_a_matching_name() {
        let c = chain("mx.example.test");
        let ta = Tlsa {
            usage: 2,
            selector: 0,
            matching: 1,
            data: sha256(&c.ca),
        };
        assert!(verify(
            &verifier(vec![ta.clone()], &["mx.example.test"]),
            &c
        ));
        assert!(
            !verify(&verifier(vec![ta.clone()], &["mx.elsewhere.test"]), &c),
            "the name is checked for DANE-TA"
        );
        let other = chain("mx.example.test");
        assert!(
            !verify(&verifier(vec![ta], &["mx.example.test"]), &other),
            "another CA"
        );
    }

    #[test]
    fn pkix_usages_and_unknown_parameters_are_unusable() {
        let rdata = |u: u8, s: u8, m: u8| {
            RData::TLSA(hickory_resolver::proto::rr::rdata::TLSA::new(
                u.into(),
                s.into(),
                m.into(),
                vec![1, 2, 3],
            ))
        };
        let records = vec![
            rdata(0, 0, 1),
            rdata(1, 1, 1),
            rdata(3, 2, 1),
            rdata(3, 1, 7),
            rdata(3, 1, 1),
            rdata(2, 0, 2),
        ];
        let usable: Vec<(u8, u8, u8)> = Tlsa::usable(&records)
            .iter()
            .map(|t| (t.usage, t.selector, t.matching))
            .collect();
        assert_eq!(usable, vec![(3, 1, 1), (2, 0, 2)]);
    }
}
