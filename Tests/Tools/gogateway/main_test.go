// Self-test of the channel modes. sshd cannot open direct-tcpip channels towards a client, so
// this test plays the relay with x/crypto's *server* side: it accepts the gateway's certificate
// login, opens direct-tcpip channels towards it and checks each mode byte for byte, including
// half-close. The gateway runs as a child process (this test binary re-executed with
// GOGATEWAY_RUN_MAIN=1), so its stdout protocol is checked too.
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go test .
package main

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

func TestMain(m *testing.M) {
	if os.Getenv("GOGATEWAY_RUN_MAIN") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// fakeRelay is a minimal relay: certificate login against one user CA, keepalive replies, and
// a way to open direct-tcpip channels on the gateway's connection. It presents the host key
// that hostKey makes for its listening address: a host certificate signer, as a relay presents
// it, or a plain key for the refusal test.
type fakeRelay struct {
	t        *testing.T
	listener net.Listener
	conns    chan *ssh.ServerConn
}

func newFakeRelay(t *testing.T, userCA ssh.PublicKey, hostKey func(addr string) ssh.Signer) *fakeRelay {
	checker := &ssh.CertChecker{
		IsUserAuthority: func(auth ssh.PublicKey) bool { return bytes.Equal(auth.Marshal(), userCA.Marshal()) },
	}
	cfg := &ssh.ServerConfig{PublicKeyCallback: checker.Authenticate}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.AddHostKey(hostKey(l.Addr().String()))
	r := &fakeRelay{t: t, listener: l, conns: make(chan *ssh.ServerConn, 4)}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				sc, chans, reqs, err := ssh.NewServerConn(c, cfg)
				if err != nil {
					c.Close()
					return
				}
				go func() { // like Infisical's relay: reject everything, but reply
					for req := range reqs {
						if req.WantReply {
							req.Reply(false, nil)
						}
					}
				}()
				go func() {
					for nc := range chans {
						nc.Reject(ssh.Prohibited, "no")
					}
				}()
				r.conns <- sc
			}()
		}
	}()
	return r
}

func (r *fakeRelay) addr() string { return r.listener.Addr().String() }

func (r *fakeRelay) waitConn() *ssh.ServerConn {
	select {
	case c := <-r.conns:
		return c
	case <-time.After(15 * time.Second):
		r.t.Fatal("gateway did not connect")
		return nil
	}
}

func directTCPIP() []byte {
	// host "127.0.0.1", port 8443, originator "127.0.0.1", 0: ignored by gateways.
	var b []byte
	for _, f := range []interface{}{"127.0.0.1", uint32(8443), "127.0.0.1", uint32(0)} {
		switch v := f.(type) {
		case string:
			b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
			b = append(b, v...)
		case uint32:
			b = binary.BigEndian.AppendUint32(b, v)
		}
	}
	return b
}

// gatewayProcess is the tool under test with its stdout lines.
type gatewayProcess struct {
	cmd   *exec.Cmd
	lines chan string
	all   []string
	mu    sync.Mutex
}

func startGateway(t *testing.T, args ...string) *gatewayProcess {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "GOGATEWAY_RUN_MAIN=1")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	g := &gatewayProcess{cmd: cmd, lines: make(chan string, 1024)}
	go func() {
		s := bufio.NewScanner(out)
		for s.Scan() {
			g.mu.Lock()
			g.all = append(g.all, s.Text())
			g.mu.Unlock()
			g.lines <- s.Text()
		}
		close(g.lines)
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	return g
}

// expect waits for a line with the prefix, skipping others.
func (g *gatewayProcess) expect(t *testing.T, prefix string) string {
	t.Helper()
	deadline := time.After(15 * time.Second)
	for {
		select {
		case l, ok := <-g.lines:
			if !ok {
				t.Fatalf("gateway output ended before %q", prefix)
			}
			if strings.HasPrefix(l, prefix) {
				return l
			}
		case <-deadline:
			t.Fatalf("no line %q; had %q", prefix, g.all)
		}
	}
}

type credentials struct{ key, cert string }

func makeCredentials(t *testing.T, dir, user string) (credentials, ssh.PublicKey) {
	_, caPriv, _ := ed25519.GenerateKey(rand.Reader)
	ca, _ := ssh.NewSignerFromKey(caPriv)
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalECPrivateKey(priv)
	keyFile := filepath.Join(dir, "gw")
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
	pub, _ := ssh.NewPublicKey(&priv.PublicKey)
	cert := &ssh.Certificate{
		Key: pub, CertType: ssh.UserCert, KeyId: "client-relay", ValidPrincipals: []string{user, "gw-name"},
		ValidAfter: uint64(time.Now().Add(-time.Minute).Unix()), ValidBefore: ssh.CertTimeInfinity,
	}
	if err := cert.SignCert(rand.Reader, ca); err != nil {
		t.Fatal(err)
	}
	certFile := filepath.Join(dir, "gw-cert.pub")
	os.WriteFile(certFile, ssh.MarshalAuthorizedKey(cert), 0o644)
	return credentials{keyFile, certFile}, ca.PublicKey()
}

// newSigner makes a fresh ed25519 key (host keys, CAs).
func newSigner(t *testing.T) ssh.Signer {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// hostCertificate certifies key as a host for principal, signed by ca, valid from a minute ago
// for a day; mutate adjusts the fields before signing.
func hostCertificate(t *testing.T, key ssh.PublicKey, ca ssh.Signer, principal string, mutate func(*ssh.Certificate)) *ssh.Certificate {
	c := &ssh.Certificate{
		Key: key, CertType: ssh.HostCert, KeyId: "relay-server", ValidPrincipals: []string{principal},
		ValidAfter: uint64(time.Now().Add(-time.Minute).Unix()), ValidBefore: uint64(time.Now().Add(24 * time.Hour).Unix()),
	}
	if mutate != nil {
		mutate(c)
	}
	if err := c.SignCert(rand.Reader, ca); err != nil {
		t.Fatal(err)
	}
	return c
}

// certifiedHostKey presents a host certificate from ca for the relay's own address, as our
// relay presents ssh.serverCertificate.
func certifiedHostKey(t *testing.T, ca ssh.Signer) func(addr string) ssh.Signer {
	return func(addr string) ssh.Signer {
		key := newSigner(t)
		s, err := ssh.NewCertSigner(hostCertificate(t, key.PublicKey(), ca, addr, nil), key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
}

func writeAuthorizedKey(t *testing.T, dir, name string, key ssh.PublicKey) string {
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, ssh.MarshalAuthorizedKey(key), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// setup starts a fake relay presenting a host certificate from a fresh host CA and the gateway
// under test with -host-ca (the default, strict check), and waits for READY.
func setup(t *testing.T, extra ...string) (*fakeRelay, *ssh.ServerConn, *gatewayProcess) {
	dir := t.TempDir()
	creds, ca := makeCredentials(t, dir, "gw-1")
	hostCA := newSigner(t)
	relay := newFakeRelay(t, ca, certifiedHostKey(t, hostCA))
	t.Cleanup(func() { relay.listener.Close() })
	args := append([]string{"-relay", relay.addr(), "-user", "gw-1", "-key", creds.key, "-cert", creds.cert,
		"-host-ca", writeAuthorizedKey(t, dir, "host-ca.pub", hostCA.PublicKey())}, extra...)
	g := startGateway(t, args...)
	g.expect(t, "READY")
	return relay, relay.waitConn(), g
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// roundTrip writes data, half-closes, and reads until EOF; the write runs concurrently so that
// window-limited modes cannot deadlock.
func roundTrip(ch ssh.Channel, data []byte) ([]byte, error) {
	errc := make(chan error, 1)
	go func() {
		_, err := ch.Write(data)
		if err == nil {
			err = ch.CloseWrite()
		}
		errc <- err
	}()
	got, rerr := io.ReadAll(ch)
	if werr := <-errc; werr != nil {
		return got, werr
	}
	return got, rerr
}

func TestEchoHalfCloseAndConcurrency(t *testing.T) {
	_, conn, g := setup(t, "-mode", "echo", "-count-channels")
	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ch, reqs, err := conn.OpenChannel("direct-tcpip", directTCPIP())
			if err != nil {
				errs <- err
				return
			}
			go ssh.DiscardRequests(reqs)
			data := randomBytes(256 * 1024)
			got, err := roundTrip(ch, data)
			ch.Close()
			if err != nil || !bytes.Equal(got, data) {
				errs <- fmt.Errorf("echo: %d of %d bytes back, err %v", len(got), len(data), err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	closed := 0
	for closed < n {
		l := g.expect(t, "CHANNEL ")
		if strings.HasSuffix(l, " CLOSED 262144 262144") {
			closed++
		} else if !strings.HasSuffix(l, " OPEN") {
			t.Fatalf("unexpected %q", l)
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if last := g.all[len(g.all)-1]; last != fmt.Sprintf("CHANNELS 0 %d", n) {
		t.Errorf("last line %q, want CHANNELS 0 %d", last, n)
	}
}

func TestSourceAndDiscard(t *testing.T) {
	_, conn, g := setup(t, "-mode", "source", "-source-bytes", "100000")
	ch, reqs, err := conn.OpenChannel("direct-tcpip", directTCPIP())
	if err != nil {
		t.Fatal(err)
	}
	go ssh.DiscardRequests(reqs)
	got, err := roundTrip(ch, []byte("ignored"))
	if err != nil || len(got) != 100000 {
		t.Fatalf("source: %d bytes, %v", len(got), err)
	}
	for i, b := range got {
		if b != byte(i%251) {
			t.Fatalf("source byte %d is %d", i, b)
		}
	}
	ch.Close()
	if l := g.expect(t, "CHANNEL 1 CLOSED"); l != "CHANNEL 1 CLOSED 7 100000" {
		t.Errorf("got %q", l)
	}

	_, conn, g = setup(t, "-mode", "discard")
	ch, reqs, _ = conn.OpenChannel("direct-tcpip", directTCPIP())
	go ssh.DiscardRequests(reqs)
	got, err = roundTrip(ch, randomBytes(300000))
	if err != nil || len(got) != 0 {
		t.Fatalf("discard: %d bytes back, %v", len(got), err)
	}
	ch.Close()
	if l := g.expect(t, "CHANNEL 1 CLOSED"); l != "CHANNEL 1 CLOSED 300000 0" {
		t.Errorf("got %q", l)
	}
}

func TestForwardHalfClose(t *testing.T) {
	target, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	// The target reads until EOF (proving the channel's EOF arrived as a TCP half-close), then
	// answers with a reversed copy and closes.
	go func() {
		for {
			c, err := target.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				in, _ := io.ReadAll(c)
				for i, j := 0, len(in)-1; i < j; i, j = i+1, j-1 {
					in[i], in[j] = in[j], in[i]
				}
				c.Write(in)
			}()
		}
	}()
	_, conn, g := setup(t, "-mode", "forward", "-target", target.Addr().String())
	ch, reqs, err := conn.OpenChannel("direct-tcpip", directTCPIP())
	if err != nil {
		t.Fatal(err)
	}
	go ssh.DiscardRequests(reqs)
	got, err := roundTrip(ch, []byte("hello, target"))
	if err != nil || string(got) != "tegrat ,olleh" {
		t.Fatalf("forward: %q, %v", got, err)
	}
	ch.Close()
	if l := g.expect(t, "CHANNEL 1 CLOSED"); l != "CHANNEL 1 CLOSED 13 13" {
		t.Errorf("got %q", l)
	}
}

func TestOtherChannelTypesRejectedAndKeepalive(t *testing.T) {
	_, conn, g := setup(t, "-keepalive", "200ms", "-keepalive-timeout", "2s")
	_, _, err := conn.OpenChannel("session", nil)
	var oce *ssh.OpenChannelError
	if !errors.As(err, &oce) || oce.Reason != ssh.UnknownChannelType {
		t.Fatalf("session channel: %v", err)
	}
	g.expect(t, "REJECTED session")
	g.expect(t, "KEEPALIVE ok") // our fake relay replies false, as Infisical's does
	conn.Close()
	if l := g.expect(t, "DISCONNECTED"); l != "DISCONNECTED closed" {
		t.Errorf("got %q", l)
	}
}

// The host key check, in process: every certificate shape against the strict default and
// against -infisical-exact (x/crypto's CheckCert alone, as Infisical's gateway calls it).
func TestHostKeyCheck(t *testing.T) {
	ca, otherCA := newSigner(t), newSigner(t)
	key := newSigner(t).PublicKey()
	const addr = "127.0.0.1:2222"
	cert := func(mutate func(*ssh.Certificate)) ssh.PublicKey { return hostCertificate(t, key, ca, addr, mutate) }
	tampered := hostCertificate(t, key, ca, addr, nil)
	tampered.Signature.Blob[len(tampered.Signature.Blob)-1] ^= 1
	now := time.Now()
	cases := []struct {
		name          string
		key           ssh.PublicKey
		strict, exact string // "" = accepted, else a substring of the error
	}{
		{"good", cert(nil), "", ""},
		{"plain key", key, "host certificates required, raw host keys not allowed", "host certificates required, raw host keys not allowed"},
		{"other CA", hostCertificate(t, key, otherCA, addr, nil), "ssh: certificate signed by unrecognized authority", ""},
		{"user certificate", cert(func(c *ssh.Certificate) { c.CertType = ssh.UserCert }),
			"ssh: certificate presented as a host key has type 1", ""},
		{"no principals", cert(func(c *ssh.Certificate) { c.ValidPrincipals = nil }), "names no principals", ""},
		{"expired", cert(func(c *ssh.Certificate) { c.ValidBefore = uint64(now.Add(-time.Second).Unix()) }),
			"ssh: cert has expired", "ssh: cert has expired"},
		{"not yet valid", cert(func(c *ssh.Certificate) { c.ValidAfter = uint64(now.Add(time.Hour).Unix()) }),
			"ssh: cert is not yet valid", "ssh: cert is not yet valid"},
		{"other host", hostCertificate(t, key, ca, "10.9.9.9:2222", nil),
			`ssh: principal "127.0.0.1:2222" not in the set of valid principals`, `ssh: principal "127.0.0.1:2222" not in the set`},
		{"other port", hostCertificate(t, key, ca, "127.0.0.1:2223", nil),
			`["127.0.0.1:2223"]`, `["127.0.0.1:2223"]`},
		{"host name only", hostCertificate(t, key, ca, "127.0.0.1", nil), "not in the set of valid principals", "not in the set of valid principals"},
		{"critical option", cert(func(c *ssh.Certificate) { c.CriticalOptions = map[string]string{"force-command": "/bin/true"} }),
			`ssh: unsupported critical option "force-command"`, `ssh: unsupported critical option "force-command"`},
		{"tampered signature", tampered, "ssh: certificate signature does not verify", "ssh: certificate signature does not verify"},
	}
	for _, c := range cases {
		for _, mode := range []struct {
			strict bool
			want   string
		}{{true, c.strict}, {false, c.exact}} {
			err := newHostKeyCallback(ca.PublicKey(), mode.strict, time.Now)(addr, nil, c.key)
			switch {
			case mode.want == "" && err != nil:
				t.Errorf("%s (strict=%v): refused: %v", c.name, mode.strict, err)
			case mode.want != "" && err == nil:
				t.Errorf("%s (strict=%v): accepted, want %q", c.name, mode.strict, mode.want)
			case err != nil && !strings.Contains(err.Error(), mode.want):
				t.Errorf("%s (strict=%v): %v, want %q", c.name, mode.strict, err, mode.want)
			case err != nil && c.name != "plain key" && !strings.HasPrefix(err.Error(), "host certificate check failed: "):
				t.Errorf("%s (strict=%v): %v lacks Infisical's wrapper", c.name, mode.strict, err)
			}
		}
	}
}

// A relay presenting a plain host key is refused before authentication, with Infisical's text,
// and the tool exits 1 without READY.
func TestPlainHostKeyRefused(t *testing.T) {
	dir := t.TempDir()
	creds, ca := makeCredentials(t, dir, "gw-1")
	relay := newFakeRelay(t, ca, func(string) ssh.Signer { return newSigner(t) })
	t.Cleanup(func() { relay.listener.Close() })
	g := startGateway(t, "-relay", relay.addr(), "-user", "gw-1", "-key", creds.key, "-cert", creds.cert,
		"-host-ca", writeAuthorizedKey(t, dir, "host-ca.pub", newSigner(t).PublicKey()))
	want := "ERROR ssh: handshake failed: host certificates required, raw host keys not allowed"
	if l := g.expect(t, "ERROR"); l != want {
		t.Errorf("got %q, want %q", l, want)
	}
	err := g.cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != exitConnectFailed {
		t.Errorf("exit: %v, want %d", err, exitConnectFailed)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, l := range g.all {
		if l == "READY" {
			t.Error("READY after a plain host key")
		}
	}
}
