// gogateway is a test peer that behaves like Infisical's gateway (packages/gateway-v2/gateway.go in
// Infisical/cli) on the SSH side: it dials the relay's SSH port as an SSH *client*, authenticates with
// an OpenSSH user certificate, keeps the connection alive with keepalive@openssh.com, and accepts the
// direct-tcpip channels the relay opens towards it. What it does with a channel's bytes is chosen by
// -mode (echo, forward, discard, source).
//
// It is built on Debian's golang.org/x/crypto/ssh (0.4.0) and builds offline:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o gogateway .
//
// Every event is printed on stdout as one machine-readable line (see README.md); human-oriented
// diagnostics go to stderr.
package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
)

// Exit codes.
const (
	exitSignal           = 0 // stopped by SIGTERM/SIGINT
	exitConnectFailed    = 1 // dial, handshake, host key or authentication failed
	exitUsage            = 2 // bad flags or unreadable key/certificate files
	exitKeepaliveTimeout = 3 // a keepalive got no reply in time
	exitDisconnected     = 4 // the server closed the connection (or it failed) after READY
)

// Infisical's gateway algorithm set (createSSHConfig in packages/gateway-v2/gateway.go).
// x/crypto 0.4.0 implements neither diffie-hellman-group16-sha512, -group18-sha512 nor hmac-sha2-512;
// they are still listed (in Infisical's order) so that the KEXINIT this tool sends is the gateway's.
var (
	infisicalKex     = []string{"diffie-hellman-group14-sha256", "diffie-hellman-group16-sha512", "diffie-hellman-group18-sha512"}
	infisicalCiphers = []string{"aes128-ctr", "aes192-ctr", "aes256-ctr"}
	infisicalMACs    = []string{"hmac-sha2-256", "hmac-sha2-512"}
)

type options struct {
	relay            string
	user             string
	keyFile          string
	certFile         string
	hostCAFile       string
	infisicalExact   bool
	algorithms       string
	keepalive        time.Duration
	keepaliveTimeout time.Duration
	dialTimeout      time.Duration
	mode             string
	target           string
	sourceBytes      int64
	reconnect        bool
	reconnectDelay   time.Duration
	countChannels    bool
	exitOnStdinEOF   bool
}

// ---------------------------------------------------------------------------------------------
// Output: one line per event, written with a single write(2) each, never interleaved.

var outMu sync.Mutex

func emit(format string, args ...interface{}) {
	line := fmt.Sprintf(format, args...)
	line = strings.ReplaceAll(line, "\n", " ")
	outMu.Lock()
	os.Stdout.Write([]byte(line + "\n")) // os.Stdout is unbuffered: the line is out immediately
	outMu.Unlock()
}

func diag(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "gogateway: "+format+"\n", args...)
}

// ---------------------------------------------------------------------------------------------

func main() {
	o := parseFlags()
	cfg, err := clientConfig(o)
	if err != nil {
		emit("ERROR %v", err)
		os.Exit(exitUsage)
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	stop := make(chan struct{})
	var stopOnce sync.Once
	go func() {
		<-sigs
		stopOnce.Do(func() { close(stop) })
	}()
	if o.exitOnStdinEOF {
		// The parent (a test) holds our stdin open; when it goes away, stop as on SIGTERM.
		go func() {
			io.Copy(io.Discard, os.Stdin)
			diag("stdin closed: stopping")
			stopOnce.Do(func() { close(stop) })
		}()
	}

	g := &gateway{o: o}
	for {
		code := g.runOnce(cfg, stop)
		if code == exitSignal {
			os.Exit(exitSignal)
		}
		if !o.reconnect {
			os.Exit(code)
		}
		diag("reconnecting in %v", o.reconnectDelay)
		select {
		case <-stop:
			os.Exit(exitSignal)
		case <-time.After(o.reconnectDelay):
		}
	}
}

func parseFlags() options {
	var o options
	fs := flag.NewFlagSet("gogateway", flag.ContinueOnError)
	fs.StringVar(&o.relay, "relay", "", "relay SSH address host:port (required)")
	fs.StringVar(&o.user, "user", "", "SSH user name: the gateway id (required)")
	fs.StringVar(&o.keyFile, "key", "", "private key file (required)")
	fs.StringVar(&o.certFile, "cert", "", "OpenSSH user certificate for -key (…-cert.pub) (required)")
	fs.StringVar(&o.hostCAFile, "host-ca", "", "relay SSH server CA public key (ssh.serverCAPublicKey): require a host certificate it signed for host:port (required)")
	fs.BoolVar(&o.infisicalExact, "infisical-exact", false, "check the host certificate exactly as Infisical's gateway does: skip the explicit CA, type and non-empty-principals checks that x/crypto's CheckCert leaves out")
	fs.StringVar(&o.algorithms, "algorithms", "infisical", "infisical (the gateway's restricted set) or default (x/crypto defaults)")
	fs.DurationVar(&o.keepalive, "keepalive", 30*time.Second, "interval between keepalive@openssh.com requests (0 disables)")
	fs.DurationVar(&o.keepaliveTimeout, "keepalive-timeout", 15*time.Second, "time to wait for a keepalive reply")
	fs.DurationVar(&o.dialTimeout, "dial-timeout", 30*time.Second, "TCP connect timeout, and the time allowed for the SSH handshake")
	fs.StringVar(&o.mode, "mode", "echo", "what to do with direct-tcpip channels: echo, forward, discard or source")
	fs.StringVar(&o.target, "target", "", "forward mode: TCP address host:port to splice channels to")
	fs.Int64Var(&o.sourceBytes, "source-bytes", 1<<20, "source mode: bytes to send on each channel (byte i is i mod 251)")
	fs.BoolVar(&o.reconnect, "reconnect", false, "after a failure or disconnect, wait -reconnect-delay and connect again")
	fs.DurationVar(&o.reconnectDelay, "reconnect-delay", 10*time.Second, "delay before reconnecting")
	fs.BoolVar(&o.countChannels, "count-channels", false, "after every channel open and close print CHANNELS <open> <total>")
	fs.BoolVar(&o.exitOnStdinEOF, "exit-on-stdin-eof", false, "stop (as on SIGTERM) when stdin reaches EOF, so that a test's child cannot outlive it")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(exitUsage)
	}
	usage := func(msg string) {
		emit("ERROR usage: %s", msg)
		os.Exit(exitUsage)
	}
	if fs.NArg() != 0 {
		usage("unexpected arguments: " + strings.Join(fs.Args(), " "))
	}
	if o.relay == "" || o.user == "" || o.keyFile == "" || o.certFile == "" || o.hostCAFile == "" {
		usage("-relay, -user, -key, -cert and -host-ca are required")
	}
	if _, _, err := net.SplitHostPort(o.relay); err != nil {
		usage("-relay: " + err.Error())
	}
	switch o.mode {
	case "echo", "discard", "source":
	case "forward":
		if o.target == "" {
			usage("-mode forward needs -target")
		}
	default:
		usage("-mode must be echo, forward, discard or source")
	}
	if o.algorithms != "infisical" && o.algorithms != "default" {
		usage("-algorithms must be infisical or default")
	}
	if o.keepalive > 0 && o.keepaliveTimeout <= 0 {
		usage("-keepalive-timeout must be positive")
	}
	if o.sourceBytes < 0 {
		usage("-source-bytes must not be negative")
	}
	return o
}

// ---------------------------------------------------------------------------------------------
// Configuration: user certificate signer, algorithms, host key check.

func clientConfig(o options) (*ssh.ClientConfig, error) {
	keyPEM, err := os.ReadFile(o.keyFile)
	if err != nil {
		return nil, fmt.Errorf("read -key: %v", err)
	}
	signer, err := ssh.ParsePrivateKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("parse -key: %v", err)
	}
	cert, err := readCertificate(o.certFile)
	if err != nil {
		return nil, fmt.Errorf("-cert: %v", err)
	}
	certSigner, err := ssh.NewCertSigner(cert, signer)
	if err != nil {
		return nil, fmt.Errorf("-cert does not match -key: %v", err)
	}
	hostKeyCallback, err := hostKeyCheck(o)
	if err != nil {
		return nil, err
	}
	cfg := &ssh.ClientConfig{
		User:            o.user,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(certSigner)},
		HostKeyCallback: hostKeyCallback,
	}
	if o.algorithms == "infisical" {
		cfg.KeyExchanges = infisicalKex
		cfg.Ciphers = infisicalCiphers
		cfg.MACs = infisicalMACs
	}
	return cfg, nil
}

func readPublicKey(path string) (ssh.PublicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	key, _, _, _, err := ssh.ParseAuthorizedKey(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return key, nil
}

func readCertificate(path string) (*ssh.Certificate, error) {
	key, err := readPublicKey(path)
	if err != nil {
		return nil, err
	}
	cert, ok := key.(*ssh.Certificate)
	if !ok {
		return nil, fmt.Errorf("%s: not an OpenSSH certificate", path)
	}
	return cert, nil
}

// hostKeyCheck is the host key callback of Infisical's gateway (createSSHConfig and
// validateHostCertificate in packages/gateway-v2/gateway.go, infisical-protocol.md §4.1):
//
//   - the key must be an *ssh.Certificate, otherwise "host certificates required, raw host keys
//     not allowed" (Infisical: in every mode);
//   - ssh.CertChecker{IsHostAuthority: <signing key == ssh.serverCAPublicKey>}.CheckCert(hostname, cert)
//     with hostname the dial address "host:port" exactly as dialled, errors wrapped as
//     "host certificate check failed: …". CheckCert checks critical options, the principal (an
//     empty list means any host), the validity window and the signature by the key embedded in
//     the certificate; it calls neither IsHostAuthority nor looks at the certificate type.
//
// By default (strict, what our gateway does, DESIGN D1) three checks come first that CheckCert
// leaves out: the certificate type is host, it is signed by the CA, and it names at least one
// principal. -infisical-exact skips them, to behave byte for byte like Infisical's gateway.
func hostKeyCheck(o options) (ssh.HostKeyCallback, error) {
	ca, err := readPublicKey(o.hostCAFile)
	if err != nil {
		return nil, fmt.Errorf("-host-ca: %v", err)
	}
	if _, isCert := ca.(*ssh.Certificate); isCert {
		return nil, fmt.Errorf("-host-ca: %s is a certificate, not a CA public key", o.hostCAFile)
	}
	return newHostKeyCallback(ca, !o.infisicalExact, time.Now), nil
}

func newHostKeyCallback(ca ssh.PublicKey, strict bool, clock func() time.Time) ssh.HostKeyCallback {
	// x/crypto hands the callback the address exactly as dialled ("host:port").
	return func(hostname string, _ net.Addr, key ssh.PublicKey) error {
		cert, ok := key.(*ssh.Certificate)
		if !ok {
			return errors.New("host certificates required, raw host keys not allowed")
		}
		if strict {
			if err := strictHostChecks(cert, ca); err != nil {
				return fmt.Errorf("host certificate check failed: %v", err)
			}
		}
		checker := &ssh.CertChecker{
			IsHostAuthority: func(auth ssh.PublicKey, _ string) bool {
				return bytes.Equal(auth.Marshal(), ca.Marshal())
			},
			Clock: clock,
		}
		if err := checker.CheckCert(hostname, cert); err != nil {
			return fmt.Errorf("host certificate check failed: %v", err)
		}
		return nil
	}
}

// strictHostChecks are what Infisical's gateway configures or implies but x/crypto's CheckCert
// never enforces (infisical-protocol.md §4.1). Wording as x/crypto's CheckHostKey and
// Authenticate, and as our gateway's RelayHostCertificateRejectionReason.
func strictHostChecks(cert *ssh.Certificate, ca ssh.PublicKey) error {
	if cert.CertType != ssh.HostCert {
		return fmt.Errorf("ssh: certificate presented as a host key has type %d", cert.CertType)
	}
	if !bytes.Equal(cert.SignatureKey.Marshal(), ca.Marshal()) {
		return errors.New("ssh: certificate signed by unrecognized authority")
	}
	if len(cert.ValidPrincipals) == 0 {
		return errors.New("ssh: host certificate names no principals (x/crypto would accept it for any host)")
	}
	return nil
}

// ---------------------------------------------------------------------------------------------
// One connection: dial, handshake, READY, serve channels and keepalives until it ends.

type gateway struct {
	o          options
	channelSeq int64 // channels accepted so far, over all connections (numbers the CHANNEL lines)
	openChans  int64
	countMu    sync.Mutex // orders CHANNELS lines
}

func (g *gateway) runOnce(cfg *ssh.ClientConfig, stop <-chan struct{}) int {
	o := g.o
	ctx, cancel := context.WithTimeout(context.Background(), o.dialTimeout)
	go func() {
		select {
		case <-stop:
		case <-ctx.Done():
		}
		cancel()
	}()
	tcp, err := (&net.Dialer{}).DialContext(ctx, "tcp", o.relay)
	cancel()
	if err != nil {
		select {
		case <-stop:
			return exitSignal
		default:
		}
		emit("ERROR dial %s: %v", o.relay, err)
		return exitConnectFailed
	}
	if tc, ok := tcp.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	sniff := newKexSniffer(tcp)
	sniff.SetDeadline(time.Now().Add(o.dialTimeout))

	// The handshake can block (a silent server); SIGTERM must still stop us.
	type result struct {
		conn  ssh.Conn
		chans <-chan ssh.NewChannel
		reqs  <-chan *ssh.Request
		err   error
	}
	done := make(chan result, 1)
	go func() {
		c, ch, rq, err := ssh.NewClientConn(sniff, o.relay, cfg)
		done <- result{c, ch, rq, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-stop:
		tcp.Close()
		<-done
		return exitSignal
	}
	if line := sniff.negotiated(); line != "" {
		emit("NEGOTIATED %s", line)
	}
	if r.err != nil {
		emit("ERROR %v", r.err)
		return exitConnectFailed
	}
	sniff.SetDeadline(time.Time{})
	conn := r.conn
	diag("authenticated as %q to %s (%s)", conn.User(), o.relay, conn.ServerVersion())
	emit("READY")

	go ssh.DiscardRequests(r.reqs) // global requests from the server: reply false
	go g.serveChannels(r.chans)

	keepaliveFailed := make(chan struct{})
	if o.keepalive > 0 {
		go keepalive(conn, o.keepalive, o.keepaliveTimeout, keepaliveFailed)
	}
	closed := make(chan error, 1)
	go func() { closed <- conn.Wait() }()

	select {
	case <-stop:
		conn.Close()
		<-closed
		emit("DISCONNECTED signal")
		return exitSignal
	case <-keepaliveFailed:
		conn.Close()
		<-closed
		emit("DISCONNECTED keepalive-timeout")
		return exitKeepaliveTimeout
	case err := <-closed:
		if err == nil || errors.Is(err, io.EOF) {
			emit("DISCONNECTED closed")
		} else {
			emit("DISCONNECTED error %v", err)
		}
		return exitDisconnected
	}
}

// keepalive mirrors Infisical/cli packages/util/ssh.go: every interval a keepalive@openssh.com
// global request with want-reply; any reply (success or failure) counts, none within the timeout
// ends the connection.
func keepalive(conn ssh.Conn, interval, timeout time.Duration, failed chan<- struct{}) {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for range ticker.C {
		reply := make(chan error, 1)
		go func() {
			_, _, err := conn.SendRequest("keepalive@openssh.com", true, nil)
			reply <- err
		}()
		select {
		case err := <-reply:
			if err != nil { // the connection is gone; runOnce reports it
				return
			}
			emit("KEEPALIVE ok")
		case <-time.After(timeout):
			emit("KEEPALIVE fail")
			close(failed)
			return
		}
	}
}

func (g *gateway) printCounts() {
	if !g.o.countChannels {
		return
	}
	g.countMu.Lock()
	emit("CHANNELS %d %d", atomic.LoadInt64(&g.openChans), atomic.LoadInt64(&g.channelSeq))
	g.countMu.Unlock()
}

func (g *gateway) serveChannels(chans <-chan ssh.NewChannel) {
	for nc := range chans {
		if nc.ChannelType() != "direct-tcpip" {
			emit("REJECTED %s", nc.ChannelType())
			nc.Reject(ssh.UnknownChannelType, "unsupported channel type")
			continue
		}
		// Like Infisical's gateway, the direct-tcpip extra data (host, port, originator) is ignored.
		ch, reqs, err := nc.Accept()
		if err != nil {
			emit("ERROR accept channel: %v", err)
			continue
		}
		go ssh.DiscardRequests(reqs)
		n := atomic.AddInt64(&g.channelSeq, 1)
		atomic.AddInt64(&g.openChans, 1)
		emit("CHANNEL %d OPEN", n)
		g.printCounts()
		go func() {
			in, out := g.serve(n, ch)
			ch.Close()
			atomic.AddInt64(&g.openChans, -1)
			emit("CHANNEL %d CLOSED %d %d", n, in, out)
			g.printCounts()
		}()
	}
}

// serve runs one channel in the selected mode and returns the bytes read from and written to it.
// It returns when both directions are finished; the caller closes the channel.
func (g *gateway) serve(n int64, ch ssh.Channel) (int64, int64) {
	switch g.o.mode {
	case "echo":
		// Write back everything read; at EOF finish writing, then send EOF (CloseWrite).
		buf := make([]byte, 32*1024)
		var in, out int64
		for {
			k, rerr := ch.Read(buf)
			in += int64(k)
			if k > 0 {
				w, werr := ch.Write(buf[:k])
				out += int64(w)
				if werr != nil {
					return in, out
				}
			}
			if rerr != nil {
				if rerr == io.EOF {
					ch.CloseWrite()
				}
				return in, out
			}
		}

	case "discard":
		in, err := io.Copy(io.Discard, ch)
		if err == nil {
			ch.CloseWrite()
		}
		return in, 0

	case "source":
		var wg sync.WaitGroup
		var in int64
		wg.Add(1)
		go func() {
			defer wg.Done()
			in, _ = io.Copy(io.Discard, ch)
		}()
		out, err := io.Copy(ch, &patternReader{remaining: g.o.sourceBytes})
		if err == nil {
			ch.CloseWrite()
		}
		wg.Wait()
		return in, out

	default: // forward
		t, err := net.DialTimeout("tcp", g.o.target, 10*time.Second)
		if err != nil {
			emit("ERROR channel %d: dial target %s: %v", n, g.o.target, err)
			return 0, 0
		}
		tcp := t.(*net.TCPConn)
		tcp.SetNoDelay(true)
		defer tcp.Close()
		var wg sync.WaitGroup
		var in, out int64
		wg.Add(2)
		go func() { // channel -> target, then half-close the target
			defer wg.Done()
			var err error
			in, err = io.Copy(tcp, ch)
			if err == nil {
				tcp.CloseWrite()
			} else {
				tcp.Close()
				ch.Close()
			}
		}()
		go func() { // target -> channel, then send EOF on the channel
			defer wg.Done()
			var err error
			out, err = io.Copy(ch, tcp)
			if err == nil {
				ch.CloseWrite()
			} else {
				tcp.Close()
				ch.Close()
			}
		}()
		wg.Wait()
		return in, out
	}
}

// patternReader yields `remaining` bytes where byte i of the stream is i mod 251.
type patternReader struct {
	offset, remaining int64
}

func (p *patternReader) Read(b []byte) (int, error) {
	if p.remaining <= 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > p.remaining {
		b = b[:p.remaining]
	}
	for i := range b {
		b[i] = byte((p.offset + int64(i)) % 251)
	}
	p.offset += int64(len(b))
	p.remaining -= int64(len(b))
	return len(b), nil
}

// ---------------------------------------------------------------------------------------------
// NEGOTIATED: x/crypto 0.4.0 does not expose the negotiated algorithms, so the tool reads both
// first SSH_MSG_KEXINIT packets off the wire (they travel in the clear) and applies the RFC 4253
// §7.1 rule, as both sides do: for each list the first client algorithm the server also offers.
// Only the first key exchange is visible; later rekeys are encrypted.

type kexSniffer struct {
	net.Conn
	mu      sync.Mutex
	rd, wr  kexCapture
	checked bool
}

type kexCapture struct {
	buf    []byte
	lists  [][]string // the ten name-lists, once parsed
	failed bool
}

const maxCapture = 64 * 1024

func newKexSniffer(c net.Conn) *kexSniffer { return &kexSniffer{Conn: c} }

func (s *kexSniffer) Read(b []byte) (int, error) {
	n, err := s.Conn.Read(b)
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.checked && s.rd.lists != nil && s.wr.lists != nil {
		// Both KEXINITs are out and the key exchange has not finished (its reply is in these
		// bytes or later ones): refuse an algorithm x/crypto only listed, before it is used.
		s.checked = true
		if msg := s.unimplemented(); msg != "" {
			return 0, errors.New(msg)
		}
	}
	s.rd.feed(b[:n])
	return n, err
}

// Algorithms in Infisical's lists that x/crypto 0.4.0 does not implement. x/crypto sends them
// anyway (it does not filter KeyExchanges or MACs) and, if one is agreed, fails the key exchange
// (KEX) or panics (MAC, nil macMode in newPacketCipher). The tool fails cleanly instead.
var notImplemented = map[string]bool{
	"diffie-hellman-group16-sha512": true,
	"diffie-hellman-group18-sha512": true,
	"hmac-sha2-512":                 true,
}

func (s *kexSniffer) unimplemented() string {
	client, server := s.wr.lists, s.rd.lists
	for i, what := range []string{"key exchange", "", "", "", "client to server MAC", "server to client MAC"} {
		if what == "" {
			continue
		}
		if alg := firstCommon(client[i], server[i]); notImplemented[alg] {
			return fmt.Sprintf("negotiated %s %s, which this x/crypto (0.4.0) lists but does not implement", what, alg)
		}
	}
	return ""
}

func (s *kexSniffer) Write(b []byte) (int, error) {
	n, err := s.Conn.Write(b)
	s.mu.Lock()
	s.wr.feed(b[:n])
	s.mu.Unlock()
	return n, err
}

func (c *kexCapture) feed(b []byte) {
	if c.lists != nil || c.failed || len(b) == 0 {
		return
	}
	c.buf = append(c.buf, b...)
	if len(c.buf) > maxCapture {
		c.failed, c.buf = true, nil
		return
	}
	lists, complete, err := parseFirstKexInit(c.buf)
	switch {
	case err != nil:
		c.failed, c.buf = true, nil
	case complete:
		c.lists, c.buf = lists, nil
	}
}

// parseFirstKexInit parses the identification lines and the first binary packet, which must be
// an unencrypted KEXINIT. complete=false means more bytes are needed.
func parseFirstKexInit(b []byte) ([][]string, bool, error) {
	// Identification: lines before "SSH-" are allowed from servers (RFC 4253 §4.2).
	for {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			return nil, false, nil
		}
		line := b[:i]
		b = b[i+1:]
		if bytes.HasPrefix(line, []byte("SSH-")) {
			break
		}
	}
	if len(b) < 5 {
		return nil, false, nil
	}
	packetLen := binary.BigEndian.Uint32(b)
	if packetLen < 2 || packetLen > 35000 {
		return nil, false, errors.New("bad packet length")
	}
	if uint32(len(b)-4) < packetLen {
		return nil, false, nil
	}
	padding := uint32(b[4])
	if padding+1 > packetLen {
		return nil, false, errors.New("bad padding")
	}
	payload := b[5 : 4+packetLen-padding]
	if len(payload) < 17 || payload[0] != 20 { // SSH_MSG_KEXINIT, cookie
		return nil, false, errors.New("first packet is not KEXINIT")
	}
	p := payload[17:]
	lists := make([][]string, 0, 10)
	for i := 0; i < 10; i++ {
		if len(p) < 4 {
			return nil, false, errors.New("truncated KEXINIT")
		}
		l := binary.BigEndian.Uint32(p)
		if uint32(len(p)-4) < l {
			return nil, false, errors.New("truncated KEXINIT")
		}
		var names []string
		if l > 0 {
			names = strings.Split(string(p[4:4+l]), ",")
		}
		lists = append(lists, names)
		p = p[4+l:]
	}
	return lists, true, nil
}

func firstCommon(client, server []string) string {
	for _, c := range client {
		for _, s := range server {
			if c == s {
				return c
			}
		}
	}
	return ""
}

// negotiated returns "kex=… hostkey=… cipher=… mac=…" (client-to-server cipher and MAC; the
// server-to-client ones are appended only when they differ), or "" if it cannot be determined.
func (s *kexSniffer) negotiated() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.agreed()
}

func (s *kexSniffer) agreed() string {
	client, server := s.wr.lists, s.rd.lists
	if client == nil || server == nil {
		return ""
	}
	pick := func(i int) string { return firstCommon(client[i], server[i]) }
	aead := func(cipher string) bool {
		return cipher == "aes128-gcm@openssh.com" || cipher == "aes256-gcm@openssh.com" ||
			cipher == "chacha20-poly1305@openssh.com"
	}
	kex, hostKey := pick(0), pick(1)
	cipherCS, cipherSC := pick(2), pick(3)
	macCS, macSC := "implicit", "implicit"
	if !aead(cipherCS) {
		macCS = pick(4)
	}
	if !aead(cipherSC) {
		macSC = pick(5)
	}
	if kex == "" || hostKey == "" || cipherCS == "" || cipherSC == "" || macCS == "" || macSC == "" {
		return ""
	}
	line := fmt.Sprintf("kex=%s hostkey=%s cipher=%s mac=%s", kex, hostKey, cipherCS, macCS)
	if cipherSC != cipherCS || macSC != macCS {
		line += fmt.Sprintf(" cipher-s2c=%s mac-s2c=%s", cipherSC, macSC)
	}
	return line
}
