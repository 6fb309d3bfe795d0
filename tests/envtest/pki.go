// The pki subcommand: a throwaway certificate authority, the API server's serving
// certificate, client certificates, the service-account signing key, and kubeconfigs for
// the admin and kube-controller-manager. Does I/O (writes files into --dir).
//
// Generated here rather than with the openssl CLI: Go's crypto/x509 is already linked
// into this binary, so the tests need no other tool, and one call writes everything in a
// few milliseconds with exactly the SANs and key formats the servers expect.
package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Files written by runPKI, relative to --dir. The Rust harness names the same files.
const (
	caCert              = "ca.crt"
	apiserverCert       = "apiserver.crt"
	apiserverKey        = "apiserver.key"
	serviceAccountKey   = "sa.key"
	serviceAccountPub   = "sa.pub"
	adminKubeconfig     = "admin.kubeconfig"
	controllerMgrConfig = "kube-controller-manager.kubeconfig"
)

func runPKI(args []string) int {
	flags := flag.NewFlagSet("pki", flag.ContinueOnError)
	dir := flags.String("dir", "", "directory to write into (required)")
	server := flags.String("server", "", "API server URL for the kubeconfigs, e.g. https://127.0.0.1:6443 (required)")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	if *dir == "" || *server == "" {
		fmt.Fprintln(os.Stderr, "pki: --dir and --server are required")
		return 2
	}
	if err := writePKI(*dir, *server); err != nil {
		fmt.Fprintf(os.Stderr, "pki: %v\n", err)
		return 1
	}
	return 0
}

type keyPair struct {
	cert    *x509.Certificate
	certPEM []byte
	key     crypto.Signer
	keyPEM  []byte
}

func writePKI(dir, server string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	ca, err := issue(nil, &x509.Certificate{
		Subject:               pkix.Name{CommonName: "kiln-envtest-ca"},
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	})
	if err != nil {
		return fmt.Errorf("CA: %w", err)
	}
	serving, err := issue(ca, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local"},
		// 10.0.0.1: the `kubernetes` Service in --service-cluster-ip-range=10.0.0.0/24.
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback, net.IPv4(10, 0, 0, 1)},
	})
	if err != nil {
		return fmt.Errorf("serving certificate: %w", err)
	}
	// The admin is in system:masters, which RBAC lets do anything, as kubeadm's admin.conf.
	admin, err := issue(ca, client("kiln-envtest-admin", "system:masters"))
	if err != nil {
		return fmt.Errorf("admin certificate: %w", err)
	}
	// kube-controller-manager gets exactly its bootstrap identity, as in a real cluster:
	// its controllers then run under their own service accounts and bootstrap roles.
	controllerManager, err := issue(ca, client("system:kube-controller-manager"))
	if err != nil {
		return fmt.Errorf("kube-controller-manager certificate: %w", err)
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("service-account key: %w", err)
	}
	saKeyPEM, err := privateKeyPEM(saKey)
	if err != nil {
		return fmt.Errorf("service-account key: %w", err)
	}
	saPub, err := x509.MarshalPKIXPublicKey(saKey.Public())
	if err != nil {
		return fmt.Errorf("service-account public key: %w", err)
	}

	files := []struct {
		name string
		data []byte
	}{
		{caCert, ca.certPEM},
		{apiserverCert, serving.certPEM},
		{apiserverKey, serving.keyPEM},
		{serviceAccountKey, saKeyPEM},
		{serviceAccountPub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: saPub})},
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f.name), f.data, 0o600); err != nil {
			return err
		}
	}
	if err := writeKubeconfig(filepath.Join(dir, adminKubeconfig), server, ca, "kiln-envtest-admin", admin); err != nil {
		return err
	}
	return writeKubeconfig(filepath.Join(dir, controllerMgrConfig), server, ca, "kube-controller-manager", controllerManager)
}

func client(name string, groups ...string) *x509.Certificate {
	return &x509.Certificate{
		Subject:     pkix.Name{CommonName: name, Organization: groups},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
}

// issue signs template with parent's key (self-signed when parent is nil) for a new
// ECDSA P-256 key: fast to generate, and accepted by every Kubernetes component and by
// rustls on the test side.
func issue(parent *keyPair, template *x509.Certificate) (*keyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, err
	}
	template.SerialNumber = serial
	// An hour of slack for clock skew; ten years so a cached directory never expires mid-run.
	template.NotBefore = time.Now().Add(-time.Hour)
	template.NotAfter = time.Now().Add(10 * 365 * 24 * time.Hour)
	signerCert, signerKey := template, crypto.Signer(key)
	if parent != nil {
		signerCert, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, template, signerCert, key.Public(), signerKey)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	keyPEM, err := privateKeyPEM(key)
	if err != nil {
		return nil, err
	}
	return &keyPair{
		cert:    cert,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		key:     key,
		keyPEM:  keyPEM,
	}, nil
}

// privateKeyPEM encodes a key as PKCS#8, the one private-key format every consumer here
// (Go's keyutil, rustls-pemfile) reads.
func privateKeyPEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// writeKubeconfig writes a self-contained kubeconfig (certificates inline), usable by
// kubectl, client-go and kube-rs alike.
func writeKubeconfig(path, server string, ca *keyPair, user string, creds *keyPair) error {
	config := clientcmdapi.NewConfig()
	config.Clusters["kiln-envtest"] = &clientcmdapi.Cluster{
		Server:                   server,
		CertificateAuthorityData: ca.certPEM,
	}
	config.AuthInfos[user] = &clientcmdapi.AuthInfo{
		ClientCertificateData: creds.certPEM,
		ClientKeyData:         creds.keyPEM,
	}
	config.Contexts["kiln-envtest"] = &clientcmdapi.Context{Cluster: "kiln-envtest", AuthInfo: user}
	config.CurrentContext = "kiln-envtest"
	return clientcmd.WriteToFile(*config, path)
}
