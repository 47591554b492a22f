// infpath: a replica of Infisical's data path for bench/run (issue 14), written here from the
// behaviour described in shared/reference/infisical-protocol.md §4 (no Infisical code is used).
// Go standard library plus Debian's golang.org/x/crypto/ssh, so it builds offline:
//
//	infpath relay   -creds relay.json -listen 127.0.0.1 -ssh-port P -tls-port P -relay-name NAME
//	    crypto/tls server (client certificate required, routed by its CN) on the TLS port and an
//	    x/crypto/ssh server (host certificate, user-certificate auth with key id client-NAME) on the
//	    SSH port; per platform connection it opens a "direct-tcpip" channel with empty extra data
//	    to the gateway and splices with io.Copy both ways (§4.1, §4.2).
//	infpath gateway -creds gateway.json [-algorithms infisical|modern]
//	    x/crypto/ssh client with Infisical's host-certificate check; accepts the relay's channels
//	    and runs the inner crypto/tls server (client certificate required, ALPN) on each; dials
//	    the target the client certificate names and copies (§4.3).
//	infpath client  -creds connect-NAME.json -listen HOST:PORT [-alpn infisical-tcp-proxy]
//	    the platform side: per local connection, crypto/tls to the relay with the relay-client
//	    certificate, the inner crypto/tls over it to the gateway, then a byte pipe.
//
// The credential files are the ones `relay bench-node pki` writes (Infisical's shapes), so every
// part can pair with ours. Build: GO111MODULE=off GOPATH=/usr/share/gocode go build -o infpath .
package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: infpath relay|gateway|client [flags]")
		os.Exit(2)
	}
	args := os.Args[2:]
	switch os.Args[1] {
	case "relay":
		relay(args)
	case "gateway":
		gateway(args)
	case "client":
		client(args)
	default:
		fmt.Fprintln(os.Stderr, "unknown command", os.Args[1])
		os.Exit(2)
	}
}

func fail(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "infpath: "+format+"\n", a...)
	os.Exit(1)
}

var outMu sync.Mutex

// emit writes one line to stdout with one write(2).
func emit(format string, a ...interface{}) {
	outMu.Lock()
	os.Stdout.Write([]byte(fmt.Sprintf(format, a...) + "\n"))
	outMu.Unlock()
}

func readJSON(path string, v interface{}) {
	b, err := os.ReadFile(path)
	if err != nil {
		fail("read %s: %v", path, err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		fail("parse %s: %v", path, err)
	}
}

func pool(pemText string) *x509.CertPool {
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM([]byte(pemText)) {
		fail("no certificate in a CA chain")
	}
	return p
}

func keyPair(cert, key string) tls.Certificate {
	c, err := tls.X509KeyPair([]byte(cert), []byte(key))
	if err != nil {
		fail("certificate/key: %v", err)
	}
	return c
}

// serverPKI is the "pki" object of the relay's and the gateway's credentials (§3): a TLS server
// certificate and the chain its clients' certificates must lead to.
type serverPKI struct {
	ServerCertificate      string `json:"serverCertificate"`
	ServerPrivateKey       string `json:"serverPrivateKey"`
	ClientCertificateChain string `json:"clientCertificateChain"`
}

// mutualServer requires and verifies a client certificate, TLS 1.2 or later.
func (p serverPKI) mutualServer() *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{keyPair(p.ServerCertificate, p.ServerPrivateKey)},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool(p.ClientCertificateChain),
		MinVersion:   tls.VersionTLS12,
	}
}

// identity is one TLS client identity of relay bench-node pki's connect files.
type identity struct {
	Certificate string `json:"certificate"`
	PrivateKey  string `json:"privateKey"`
	CAChain     string `json:"caChain"`
}

// mutualClient presents the certificate and checks the server against CAChain and serverName.
func (id identity) mutualClient(serverName string) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{keyPair(id.Certificate, id.PrivateKey)},
		RootCAs:      pool(id.CAChain),
		ServerName:   serverName,
		MinVersion:   tls.VersionTLS12,
	}
}

// certSigner signs with keyPEM and presents the OpenSSH certificate certLine (field names it).
func certSigner(keyPEM, certLine, field string) ssh.Signer {
	key, err := ssh.ParsePrivateKey([]byte(keyPEM))
	if err != nil {
		fail("%s: private key: %v", field, err)
	}
	cert, ok := publicKey(certLine, field).(*ssh.Certificate)
	if !ok {
		fail("%s is not a certificate", field)
	}
	signer, err := ssh.NewCertSigner(cert, key)
	if err != nil {
		fail("%s: %v", field, err)
	}
	return signer
}

// publicKey parses one authorized_keys line (a key or a certificate).
func publicKey(line, field string) ssh.PublicKey {
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		fail("%s: %v", field, err)
	}
	return pub
}

// copyBoth copies a→b and b→a; each direction half-closes its destination when its source ends
// (TLS→channel ends with the channel's EOF, as Infisical's relay does), and both are closed once
// both directions are done.
func copyBoth(a, b io.ReadWriteCloser) {
	var wg sync.WaitGroup
	half := func(dst, src io.ReadWriteCloser) {
		defer wg.Done()
		io.Copy(dst, src)
		switch w := dst.(type) {
		case interface{ CloseWrite() error }:
			w.CloseWrite()
		default:
			dst.Close()
		}
	}
	wg.Add(2)
	go half(a, b)
	go half(b, a)
	wg.Wait()
	a.Close()
	b.Close()
}

// ---------------------------------------------------------------------------------------------
// relay

type relayCreds struct {
	PKI serverPKI `json:"pki"`
	SSH struct {
		ServerCertificate string `json:"serverCertificate"`
		ServerPrivateKey  string `json:"serverPrivateKey"`
		ClientCAPublicKey string `json:"clientCAPublicKey"`
	} `json:"ssh"`
}

const heartbeatCN = "00000000-0000-0000-0000-000000000000"

var gatewayInfoOID = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 12345, 100, 3}

type tunnels struct {
	mu sync.RWMutex
	m  map[string]*ssh.ServerConn
}

func relay(args []string) {
	fs := flag.NewFlagSet("relay", flag.ExitOnError)
	credsFile := fs.String("creds", "", "relay credentials (/api/v2/relays/connect shape)")
	listen := fs.String("listen", "127.0.0.1", "listen address")
	sshPort := fs.Int("ssh-port", 2222, "SSH port for gateways")
	tlsPort := fs.Int("tls-port", 8443, "TLS port for the platform")
	relayName := fs.String("relay-name", "bench-relay", "relay name: gateway certificates carry key id client-<name>")
	status := fs.Duration("status", time.Second, "STATUS line interval (0: none)")
	fs.Parse(args)
	var c relayCreds
	readJSON(*credsFile, &c)

	// SSH server: host certificate, user certificates signed by the client CA (§4.1).
	hostSigner := certSigner(c.SSH.ServerPrivateKey, c.SSH.ServerCertificate, "ssh.serverCertificate")
	caPub := publicKey(c.SSH.ClientCAPublicKey, "ssh.clientCAPublicKey")
	wantKeyID := "client-" + *relayName
	cfg := &ssh.ServerConfig{
		MaxAuthTries: 3,
		PublicKeyCallback: func(meta ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			cert, ok := key.(*ssh.Certificate)
			if !ok {
				return nil, errors.New("certificates required, raw public keys not allowed")
			}
			if cert.CertType != ssh.UserCert {
				return nil, errors.New("user certificate required")
			}
			// CheckCert does not compare the signing CA (§4.1 item 4): compare it here.
			if !bytes.Equal(cert.SignatureKey.Marshal(), caPub.Marshal()) {
				return nil, errors.New("certificate not signed by the client CA")
			}
			checker := ssh.CertChecker{}
			if err := checker.CheckCert(meta.User(), cert); err != nil {
				return nil, err
			}
			if len(cert.ValidPrincipals) == 0 || cert.ValidPrincipals[0] == "" {
				return nil, errors.New("gateway id is required")
			}
			if cert.KeyId != wantKeyID {
				return nil, errors.New("certificate Key ID does not match expected value")
			}
			return &ssh.Permissions{Extensions: map[string]string{"gateway-id": cert.ValidPrincipals[0]}}, nil
		},
	}
	cfg.AddHostKey(hostSigner)

	t := &tunnels{m: map[string]*ssh.ServerConn{}}
	serve(fmt.Sprintf("%s:%d", *listen, *sshPort), func(nc net.Conn) { serveGateway(nc, cfg, t) })

	// TLS server for the platform (§4.2).
	tlsCfg := c.PKI.mutualServer()
	serve(fmt.Sprintf("%s:%d", *listen, *tlsPort), func(nc net.Conn) { servePlatform(nc, tlsCfg, t) })
	emit("READY ssh=%d tls=%d pid=%d", *sshPort, *tlsPort, os.Getpid())
	if *status > 0 {
		for range time.Tick(*status) {
			t.mu.RLock()
			n := len(t.m)
			t.mu.RUnlock()
			emit("STATUS tunnels=%d", n)
		}
	}
	select {}
}

func listenTCP(addr string) net.Listener {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		fail("listen %s: %v", addr, err)
	}
	return l
}

// serve listens on addr and handles each accepted connection on its own goroutine.
func serve(addr string, handle func(net.Conn)) {
	l := listenTCP(addr)
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			go handle(nc)
		}
	}()
}

func serveGateway(nc net.Conn, cfg *ssh.ServerConfig, t *tunnels) {
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	conn, chans, reqs, err := ssh.NewServerConn(nc, cfg)
	if err != nil {
		nc.Close()
		return
	}
	nc.SetDeadline(time.Time{})
	id := conn.Permissions.Extensions["gateway-id"]
	// Global requests, keepalive included, are all answered false; channels the gateway opens
	// are refused (§4.1).
	go func() {
		for r := range reqs {
			if r.WantReply {
				r.Reply(false, nil)
			}
		}
	}()
	go func() {
		for ch := range chans {
			ch.Reject(ssh.Prohibited, "no channels")
		}
	}()
	t.mu.Lock()
	if _, taken := t.m[id]; taken {
		t.mu.Unlock()
		conn.Close() // the new connection is the one closed
		return
	}
	t.m[id] = conn
	t.mu.Unlock()
	conn.Wait()
	t.mu.Lock()
	if t.m[id] == conn {
		delete(t.m, id)
	}
	t.mu.Unlock()
}

func servePlatform(nc net.Conn, cfg *tls.Config, t *tunnels) {
	nc.(*net.TCPConn).SetNoDelay(true)
	tc := tls.Server(nc, cfg)
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err != nil {
		tc.Close()
		return
	}
	tc.SetDeadline(time.Time{})
	peer := tc.ConnectionState().PeerCertificates[0]
	id := peer.Subject.CommonName
	if id == heartbeatCN {
		tc.Close()
		return
	}
	for _, ext := range peer.Extensions {
		if ext.Id.Equal(gatewayInfoOID) {
			var info struct {
				Name string `json:"name"`
			}
			if json.Unmarshal(ext.Value, &info) != nil {
				tc.Close()
				return
			}
		}
	}
	t.mu.RLock()
	conn := t.m[id]
	t.mu.RUnlock()
	if conn == nil {
		tc.Close() // nothing is written to the socket
		return
	}
	ch, reqs, err := conn.OpenChannel("direct-tcpip", nil)
	if err != nil {
		tc.Close()
		return
	}
	go ssh.DiscardRequests(reqs)
	copyBoth(tc, ch)
}

// ---------------------------------------------------------------------------------------------
// gateway

type gatewayCreds struct {
	GatewayID    string    `json:"gatewayId"`
	RelayHost    string    `json:"relayHost"`
	RelaySSHPort int       `json:"relaySshPort"`
	PKI          serverPKI `json:"pki"`
	SSH          struct {
		ClientCertificate string `json:"clientCertificate"`
		ClientPrivateKey  string `json:"clientPrivateKey"`
		ServerCAPublicKey string `json:"serverCAPublicKey"`
	} `json:"ssh"`
}

var routingOID = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 12345, 100, 1}

func gateway(args []string) {
	fs := flag.NewFlagSet("gateway", flag.ExitOnError)
	credsFile := fs.String("creds", "", "gateway credentials (/api/v3/gateways/connect shape)")
	algos := fs.String("algorithms", "infisical", "infisical (DH group14, aes-ctr, hmac-sha2, as Infisical's gateway) or modern (curve25519, aes128-gcm first)")
	fs.Parse(args)
	var c gatewayCreds
	readJSON(*credsFile, &c)
	signer := certSigner(c.SSH.ClientPrivateKey, c.SSH.ClientCertificate, "ssh.clientCertificate")
	hostCA := publicKey(c.SSH.ServerCAPublicKey, "ssh.serverCAPublicKey")
	addr := fmt.Sprintf("%s:%d", c.RelayHost, c.RelaySSHPort)
	cfg := &ssh.ClientConfig{
		User: c.GatewayID,
		Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		// Infisical's check: a host certificate is required, and its principal is the dial
		// address; the signing CA and the certificate type are checked explicitly (§4.1).
		HostKeyCallback: func(hostname string, _ net.Addr, key ssh.PublicKey) error {
			hc, ok := key.(*ssh.Certificate)
			if !ok {
				return errors.New("host certificates required, raw host keys not allowed")
			}
			if hc.CertType != ssh.HostCert || !bytes.Equal(hc.SignatureKey.Marshal(), hostCA.Marshal()) {
				return errors.New("host certificate not signed by the relay SSH server CA")
			}
			return (&ssh.CertChecker{}).CheckCert(hostname, hc)
		},
		HostKeyAlgorithms: []string{
			ssh.CertAlgoED25519v01, ssh.CertAlgoECDSA256v01, ssh.CertAlgoRSASHA256v01, ssh.CertAlgoRSASHA512v01, ssh.CertAlgoRSAv01,
		},
		Timeout: 30 * time.Second,
	}
	switch *algos {
	case "infisical":
		cfg.KeyExchanges = []string{"diffie-hellman-group14-sha256", "diffie-hellman-group16-sha512", "diffie-hellman-group18-sha512"}
		cfg.Ciphers = []string{"aes128-ctr", "aes192-ctr", "aes256-ctr"}
		cfg.MACs = []string{"hmac-sha2-256", "hmac-sha2-512"}
	case "modern":
		cfg.KeyExchanges = []string{"curve25519-sha256", "curve25519-sha256@libssh.org", "diffie-hellman-group14-sha256"}
		cfg.Ciphers = []string{"aes128-gcm@openssh.com", "aes128-ctr"}
		cfg.MACs = []string{"hmac-sha2-256-etm@openssh.com", "hmac-sha2-256"}
	default:
		fail("-algorithms is infisical or modern")
	}
	inner := c.PKI.mutualServer()
	inner.NextProtos = []string{"infisical-tcp-proxy", "infisical-ping"}
	for {
		err := runGateway(addr, cfg, inner)
		emit("DISCONNECTED %v", err)
		time.Sleep(time.Second)
	}
}

func runGateway(addr string, cfg *ssh.ClientConfig, inner *tls.Config) error {
	client, err := ssh.Dial("tcp", addr, cfg)
	if err != nil {
		return err
	}
	chans := client.HandleChannelOpen("direct-tcpip")
	emit("CONNECTED %s", addr)
	go func() { // keepalive every 30 s; any reply will do (§4.1)
		for range time.Tick(30 * time.Second) {
			if _, _, err := client.SendRequest("keepalive@openssh.com", true, nil); err != nil {
				client.Close()
				return
			}
		}
	}()
	go func() {
		for nc := range chans {
			ch, reqs, err := nc.Accept()
			if err != nil {
				continue
			}
			go ssh.DiscardRequests(reqs)
			go serveInner(&chanConn{Channel: ch}, inner)
		}
	}()
	return client.Wait()
}

func serveInner(c *chanConn, cfg *tls.Config) {
	tc := tls.Server(c, cfg)
	if err := tc.Handshake(); err != nil {
		tc.Close()
		return
	}
	st := tc.ConnectionState()
	switch st.NegotiatedProtocol {
	case "infisical-ping":
		tc.Write([]byte("PONG\n"))
		tc.Close()
	case "infisical-tcp-proxy":
		var target struct {
			Host string `json:"targetHost"`
			Port int    `json:"targetPort"`
		}
		for _, ext := range st.PeerCertificates[0].Extensions {
			if ext.Id.Equal(routingOID) {
				json.Unmarshal(ext.Value, &target)
			}
		}
		dst, err := net.Dial("tcp", net.JoinHostPort(target.Host, fmt.Sprint(target.Port)))
		if err != nil {
			tc.Close()
			return
		}
		dst.(*net.TCPConn).SetNoDelay(true)
		copyBoth(tc, dst)
	default:
		tc.Close()
	}
}

// chanConn is the net.Conn shim around an SSH channel that crypto/tls needs.
type chanConn struct{ ssh.Channel }

type nullAddr struct{}

func (nullAddr) Network() string { return "ssh" }
func (nullAddr) String() string  { return "ssh-channel" }

func (c *chanConn) LocalAddr() net.Addr                { return nullAddr{} }
func (c *chanConn) RemoteAddr() net.Addr               { return nullAddr{} }
func (c *chanConn) SetDeadline(t time.Time) error      { return nil }
func (c *chanConn) SetReadDeadline(t time.Time) error  { return nil }
func (c *chanConn) SetWriteDeadline(t time.Time) error { return nil }

// ---------------------------------------------------------------------------------------------
// client (the platform side)

type connectCreds struct {
	RelayHost    string   `json:"relayHost"`
	RelayTLSPort int      `json:"relayTlsPort"`
	Outer        identity `json:"outer"`
	Inner        identity `json:"inner"`
}

func client(args []string) {
	fs := flag.NewFlagSet("client", flag.ExitOnError)
	credsFile := fs.String("creds", "", "connect credentials (relay bench-node pki's connect-NAME.json)")
	listen := fs.String("listen", "127.0.0.1:0", "local listener")
	alpn := fs.String("alpn", "infisical-tcp-proxy", "inner ALPN")
	once := fs.Bool("once", false, "connect once, print the first line the gateway sends, exit (with -alpn infisical-ping)")
	fs.Parse(args)
	var c connectCreds
	readJSON(*credsFile, &c)
	relayAddr := net.JoinHostPort(c.RelayHost, fmt.Sprint(c.RelayTLSPort))
	outer := c.Outer.mutualClient(c.RelayHost)
	inner := c.Inner.mutualClient("localhost")
	inner.NextProtos = []string{*alpn}
	dial := func() (*tls.Conn, error) {
		d := net.Dialer{Timeout: 30 * time.Second}
		oc, err := tls.DialWithDialer(&d, "tcp", relayAddr, outer)
		if err != nil {
			return nil, fmt.Errorf("outer TLS: %v", err)
		}
		ic := tls.Client(oc, inner)
		if err := ic.Handshake(); err != nil {
			oc.Close()
			return nil, fmt.Errorf("inner TLS: %v", err)
		}
		return ic, nil
	}
	if *once {
		ic, err := dial()
		if err != nil {
			fail("%v", err)
		}
		line, _ := bufio.NewReader(ic).ReadString('\n')
		os := ic.NetConn().(*tls.Conn).ConnectionState()
		is := ic.ConnectionState()
		emit("TLS outer=%s inner=%s alpn=%s answer=%s", tls.CipherSuiteName(os.CipherSuite), tls.CipherSuiteName(is.CipherSuite),
			is.NegotiatedProtocol, strings.TrimSpace(line))
		return
	}
	l := listenTCP(*listen)
	emit("LISTENING %s", l.Addr())
	for {
		lc, err := l.Accept()
		if err != nil {
			fail("accept: %v", err)
		}
		lc.(*net.TCPConn).SetNoDelay(true)
		go func() {
			ic, err := dial()
			if err != nil {
				fmt.Fprintln(os.Stderr, "infpath client:", err)
				lc.Close()
				return
			}
			copyBoth(lc, ic)
		}()
	}
}
