package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// caPEM returns a self-signed CA certificate in PEM.
func caPEM(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// A tls:// address: the CA file relative to the configuration, the server
// name from the address unless set; a plain address has no TLS settings.
func TestAMITLS(t *testing.T) {
	dir := t.TempDir()
	ca := caPEM(t)
	writeFile(t, dir, "ca.pem", string(ca))
	p := writeFile(t, dir, "astguard.toml", "[ami]\naddress = \"tls://127.0.0.1:5039\"\ntls_ca = \"ca.pem\"\n")
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if hp, useTLS := c.AMI.Endpoint(); hp != "127.0.0.1:5039" || !useTLS {
		t.Errorf("Endpoint() = %q, %v", hp, useTLS)
	}
	if c.AMI.TLSCA != filepath.Join(dir, "ca.pem") {
		t.Errorf("tls_ca resolved to %q", c.AMI.TLSCA)
	}
	tc, err := c.AMI.TLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	want := x509.NewCertPool()
	want.AppendCertsFromPEM(ca)
	if tc.ServerName != "127.0.0.1" || tc.RootCAs == nil || !tc.RootCAs.Equal(want) || tc.InsecureSkipVerify {
		t.Errorf("TLS config: server name %q, roots %v", tc.ServerName, tc.RootCAs)
	}

	c.AMI.TLSServerName, c.AMI.TLSCA = "pbx.example.net", ""
	if tc, err := c.AMI.TLSConfig(); err != nil || tc.ServerName != "pbx.example.net" || tc.RootCAs != nil {
		t.Errorf("with a server name and the system CAs: %+v, %v", tc, err)
	}

	c.AMI.Address = "[::1]:5038"
	if hp, useTLS := c.AMI.Endpoint(); hp != "[::1]:5038" || useTLS {
		t.Errorf("Endpoint() = %q, %v", hp, useTLS)
	}
	if tc, err := c.AMI.TLSConfig(); tc != nil || err != nil {
		t.Errorf("plain address: %+v, %v", tc, err)
	}
}

// A CA file that cannot be used stops Load, naming the file, the line and
// the key.
func TestAMITLSBadCA(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "notpem.txt", "hello\n")
	for _, tc := range []struct{ file, want string }{
		{"notpem.txt", "ami.tls_ca: " + filepath.Join(dir, "notpem.txt") + " holds no PEM certificate"},
		{"missing.pem", "ami.tls_ca: open " + filepath.Join(dir, "missing.pem") + ": no such file or directory"},
	} {
		p := writeFile(t, dir, "astguard.toml", "[ami]\naddress = \"tls://127.0.0.1:5039\"\ntls_ca = \""+tc.file+"\"\n")
		_, err := Load(p)
		if err == nil || strings.TrimSpace(err.Error()) != p+":3: "+tc.want {
			t.Errorf("%s: %v, want %s", tc.file, err, tc.want)
		}
	}
}
