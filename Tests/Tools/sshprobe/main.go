// sshprobe is a misbehaving SSH client for the relay's security tests
// (Tests/RelayRuntimeTests/RelaySSHCasesTests.swift). It plays a gateway that does what a real
// gateway never does, and prints what the relay answered, one event per line on stdout.
//
// Built on Debian's golang.org/x/crypto (0.4.0) and the standard library; builds offline:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o sshprobe main.go
//
// Modes:
//
//	-mode gateway     x/crypto client with a user certificate. After authenticating it sends the
//	                  global requests named by -global and opens the channels named by -open,
//	                  printing each answer (GLOBAL …, OPEN …), then prints READY and serves the
//	                  direct-tcpip channels the relay opens as an echo, until stdin EOF or SIGTERM.
//	-mode raw         a hand-written SSH transport (curve25519-sha256, aes128-ctr, hmac-sha2-256,
//	                  no host key check) that can send any message after the key exchange: runs the
//	                  comma-separated -script, then prints every message the relay sends (RECV <n>)
//	                  until it closes the connection (CLOSED <seconds since connect>) or -wait
//	                  passes (TIMEOUT). The script "service" alone stalls at authentication.
//
// Script steps (raw mode): service (SERVICE_REQUEST ssh-userauth, waits for SERVICE_ACCEPT),
// msg:<n> (an empty message of type n, e.g. msg:52 = USERAUTH_SUCCESS), open-session, global-keepalive,
// query:<blob> (publickey query without signature; blob names below), forged-signature (the -cert
// certificate with a signature over garbage), hugelen (a packet whose length field says 16 MiB),
// kexinit (a second KEXINIT, then another one before the first finishes), sleep:<ms>.
// Blob names: ed25519-short, rsa-huge, cert-truncated, cert-trailing, cert-bad-length, cert-valid.
package main

import (
	"bufio"
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"hash"
	"io"
	"math/big"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/curve25519"
	"golang.org/x/crypto/ssh"
)

var outMu sync.Mutex

func emit(format string, args ...interface{}) {
	line := strings.ReplaceAll(fmt.Sprintf(format, args...), "\n", " ")
	outMu.Lock()
	os.Stdout.Write([]byte(line + "\n"))
	outMu.Unlock()
}

type options struct {
	relay, bind, user, keyFile, certFile string
	mode, global, open, script           string
	wait                                 time.Duration
}

func main() {
	var o options
	flag.StringVar(&o.relay, "relay", "", "relay SSH address host:port")
	flag.StringVar(&o.bind, "bind", "", "local source address (e.g. 127.0.0.2)")
	flag.StringVar(&o.user, "user", "", "SSH user name")
	flag.StringVar(&o.keyFile, "key", "", "private key")
	flag.StringVar(&o.certFile, "cert", "", "user certificate (…-cert.pub)")
	flag.StringVar(&o.mode, "mode", "gateway", "gateway or raw")
	flag.StringVar(&o.global, "global", "", "gateway mode: global requests to send, comma-separated")
	flag.StringVar(&o.open, "open", "", "gateway mode: channel types to open, comma-separated")
	flag.StringVar(&o.script, "script", "", "raw mode: steps, comma-separated")
	flag.DurationVar(&o.wait, "wait", 10*time.Second, "raw: how long to wait for the relay after the script")
	flag.Parse()
	if o.relay == "" {
		emit("ERROR usage: -relay is required")
		os.Exit(2)
	}
	stop := make(chan struct{})
	var once sync.Once
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() { <-sigs; once.Do(func() { close(stop) }) }()
	go func() { io.Copy(io.Discard, os.Stdin); once.Do(func() { close(stop) }) }()

	var err error
	switch o.mode {
	case "gateway":
		err = runGateway(o, stop)
	case "raw":
		err = runRaw(o)
	default:
		err = errors.New("usage: unknown -mode")
	}
	if err != nil {
		emit("ERROR %v", err)
		os.Exit(1)
	}
}

func dial(o options) (net.Conn, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	if o.bind != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(o.bind)}
	}
	return d.Dial("tcp", o.relay)
}

func certSigner(o options) (ssh.Signer, *ssh.Certificate, error) {
	keyPEM, err := os.ReadFile(o.keyFile)
	if err != nil {
		return nil, nil, err
	}
	signer, err := ssh.ParsePrivateKey(keyPEM)
	if err != nil {
		return nil, nil, err
	}
	data, err := os.ReadFile(o.certFile)
	if err != nil {
		return nil, nil, err
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(data)
	if err != nil {
		return nil, nil, err
	}
	cert, ok := pub.(*ssh.Certificate)
	if !ok {
		return nil, nil, errors.New("-cert is not a certificate")
	}
	s, err := ssh.NewCertSigner(cert, signer)
	return s, cert, err
}

// ---------------------------------------------------------------------------------------------
// gateway mode

func sshString(s string) []byte {
	b := make([]byte, 4+len(s))
	binary.BigEndian.PutUint32(b, uint32(len(s)))
	copy(b[4:], s)
	return b
}

func u32(v uint32) []byte {
	b := make([]byte, 4)
	binary.BigEndian.PutUint32(b, v)
	return b
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// Payloads for the global requests and channel types the relay must refuse.
var globalPayloads = map[string][]byte{
	"tcpip-forward":                   cat(sshString(""), u32(0)),
	"tcpip-forward:0.0.0.0:80":        cat(sshString("0.0.0.0"), u32(80)),
	"tcpip-forward:127.0.0.1:2222":    cat(sshString("127.0.0.1"), u32(2222)),
	"tcpip-forward:localhost:65535":   cat(sshString("localhost"), u32(65535)),
	"cancel-tcpip-forward":            cat(sshString("127.0.0.1"), u32(5555)),
	"streamlocal-forward@openssh.com": sshString("/tmp/relay-probe.sock"),
	"no-more-sessions@openssh.com":    nil,
	"unknown@relay-test":              []byte("anything"),
	"keepalive@openssh.com":           nil,
	"hostkeys-prove-00@openssh.com":   nil,
}

var channelPayloads = map[string][]byte{
	"session":                        nil,
	"x11":                            cat(sshString("127.0.0.1"), u32(6010)),
	"auth-agent@openssh.com":         nil,
	"forwarded-tcpip":                cat(sshString("127.0.0.1"), u32(80), sshString("127.0.0.1"), u32(40000)),
	"direct-tcpip":                   cat(sshString("127.0.0.1"), u32(22), sshString("127.0.0.1"), u32(40000)),
	"direct-streamlocal@openssh.com": cat(sshString("/run/sshd.sock"), sshString(""), u32(0)),
	"tun@openssh.com":                cat(u32(1), u32(0x7fffffff)),
	"unknown-type@relay-test":        []byte("x"),
}

func list(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

func runGateway(o options, stop <-chan struct{}) error {
	signer, _, err := certSigner(o)
	if err != nil {
		return err
	}
	tcp, err := dial(o)
	if err != nil {
		return err
	}
	cfg := &ssh.ClientConfig{User: o.user, Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: 10 * time.Second}
	conn, chans, reqs, err := ssh.NewClientConn(tcp, o.relay, cfg)
	if err != nil {
		return err
	}
	emit("AUTHENTICATED")
	go ssh.DiscardRequests(reqs)
	for _, name := range list(o.global) {
		payload, known := globalPayloads[name]
		if !known {
			return fmt.Errorf("unknown global request %q", name)
		}
		wire := strings.SplitN(name, ":", 2)[0]
		ok, _, err := conn.SendRequest(wire, true, payload)
		emit("GLOBAL %s ok=%v err=%v", name, ok, err)
	}
	for _, typ := range list(o.open) {
		payload, known := channelPayloads[typ]
		if !known {
			return fmt.Errorf("unknown channel type %q", typ)
		}
		ch, _, err := conn.OpenChannel(typ, payload)
		var oce *ssh.OpenChannelError
		switch {
		case err == nil:
			emit("OPEN %s ACCEPTED", typ)
			ch.Close()
		case errors.As(err, &oce):
			emit("OPEN %s REJECTED %d %q", typ, uint32(oce.Reason), oce.Message)
		default:
			emit("OPEN %s ERROR %v", typ, err)
		}
	}
	emit("READY")
	go func() {
		for nc := range chans {
			if nc.ChannelType() != "direct-tcpip" {
				nc.Reject(ssh.UnknownChannelType, "no")
				continue
			}
			ch, creqs, err := nc.Accept()
			if err != nil {
				continue
			}
			go ssh.DiscardRequests(creqs)
			go func() {
				io.Copy(ch, ch)
				ch.CloseWrite()
				ch.Close()
			}()
		}
	}()
	closed := make(chan error, 1)
	go func() { closed <- conn.Wait() }()
	select {
	case <-stop:
		conn.Close()
		emit("DISCONNECTED signal")
	case err := <-closed:
		emit("DISCONNECTED %v", err)
	}
	return nil
}

// ---------------------------------------------------------------------------------------------
// raw mode: a minimal SSH transport (RFC 4253) with curve25519-sha256 (RFC 8731), aes128-ctr and
// hmac-sha2-256. It does not verify the host key: it exists to put arbitrary messages on the wire.

const (
	msgDisconnect      = 1
	msgServiceRequest  = 5
	msgServiceAccept   = 6
	msgKexInit         = 20
	msgNewKeys         = 21
	msgKexECDHInit     = 30
	msgKexECDHReply    = 31
	msgUserauthRequest = 50
	msgGlobalRequest   = 80
	msgChannelOpen     = 90
)

type transport struct {
	conn          net.Conn
	r             *bufio.Reader
	seqOut        uint32
	seqIn         uint32
	encOut        cipher.Stream
	macOut        hash.Hash
	encIn         cipher.Stream
	macIn         hash.Hash
	sessionID     []byte
	clientKexInit []byte
}

func (t *transport) writePacket(payload []byte) error {
	block := 8
	if t.encOut != nil {
		block = 16
	}
	pad := block - (5+len(payload))%block
	if pad < 4 {
		pad += block
	}
	pkt := make([]byte, 5+len(payload)+pad)
	binary.BigEndian.PutUint32(pkt, uint32(1+len(payload)+pad))
	pkt[4] = byte(pad)
	copy(pkt[5:], payload)
	rand.Read(pkt[5+len(payload):])
	var mac []byte
	if t.macOut != nil {
		t.macOut.Reset()
		t.macOut.Write(u32(t.seqOut))
		t.macOut.Write(pkt)
		mac = t.macOut.Sum(nil)
		t.encOut.XORKeyStream(pkt, pkt)
	}
	t.seqOut++
	_, err := t.conn.Write(append(pkt, mac...))
	return err
}

// writeRawHeader sends the first encrypted block of a packet whose length field is `length`.
func (t *transport) writeRawHeader(length uint32) error {
	blk := make([]byte, 16)
	binary.BigEndian.PutUint32(blk, length)
	blk[4] = 4
	if t.encOut != nil {
		t.encOut.XORKeyStream(blk, blk)
	}
	_, err := t.conn.Write(blk)
	return err
}

func (t *transport) readPacket() ([]byte, error) {
	block := 8
	if t.encIn != nil {
		block = 16
	}
	first := make([]byte, block)
	if _, err := io.ReadFull(t.r, first); err != nil {
		return nil, err
	}
	if t.encIn != nil {
		t.encIn.XORKeyStream(first, first)
	}
	length := binary.BigEndian.Uint32(first)
	if length < 5 || length > 256*1024 {
		return nil, fmt.Errorf("bad packet length %d", length)
	}
	rest := make([]byte, int(length)+4-block)
	if _, err := io.ReadFull(t.r, rest); err != nil {
		return nil, err
	}
	if t.encIn != nil {
		t.encIn.XORKeyStream(rest, rest)
		mac := make([]byte, t.macIn.Size())
		if _, err := io.ReadFull(t.r, mac); err != nil {
			return nil, err
		}
	}
	t.seqIn++
	pkt := append(first, rest...)
	pad := int(pkt[4])
	if pad+1 > int(length) {
		return nil, errors.New("bad padding")
	}
	return pkt[5 : 4+int(length)-pad], nil
}

func nameList(names ...string) []byte { return sshString(strings.Join(names, ",")) }

func kexInitPayload() []byte {
	cookie := make([]byte, 16)
	rand.Read(cookie)
	return cat([]byte{msgKexInit}, cookie,
		nameList("curve25519-sha256"),
		nameList("rsa-sha2-512", "rsa-sha2-256", "ssh-ed25519", "ecdsa-sha2-nistp256"),
		nameList("aes128-ctr"), nameList("aes128-ctr"),
		nameList("hmac-sha2-256"), nameList("hmac-sha2-256"),
		nameList("none"), nameList("none"), nameList(), nameList(),
		[]byte{0}, u32(0))
}

type reader struct {
	b   []byte
	err bool
}

func (r *reader) u32() uint32 {
	if len(r.b) < 4 {
		r.err = true
		return 0
	}
	v := binary.BigEndian.Uint32(r.b)
	r.b = r.b[4:]
	return v
}

func (r *reader) str() []byte {
	n := r.u32()
	if r.err || uint32(len(r.b)) < n {
		r.err = true
		return nil
	}
	s := r.b[:n]
	r.b = r.b[n:]
	return s
}

func mpint(b []byte) []byte {
	v := new(big.Int).SetBytes(b).Bytes()
	if len(v) > 0 && v[0]&0x80 != 0 {
		v = append([]byte{0}, v...)
	}
	return cat(u32(uint32(len(v))), v)
}

func connectRaw(o options) (*transport, error) {
	tcp, err := dial(o)
	if err != nil {
		return nil, err
	}
	t := &transport{conn: tcp, r: bufio.NewReader(tcp)}
	const clientVersion = "SSH-2.0-relay-sshprobe"
	if _, err := tcp.Write([]byte(clientVersion + "\r\n")); err != nil {
		return nil, err
	}
	var serverVersion string
	for {
		line, err := t.r.ReadString('\n')
		if err != nil {
			return nil, fmt.Errorf("version: %v", err)
		}
		line = strings.TrimRight(line, "\r\n")
		if strings.HasPrefix(line, "SSH-") {
			serverVersion = line
			break
		}
	}
	t.clientKexInit = kexInitPayload()
	if err := t.writePacket(t.clientKexInit); err != nil {
		return nil, err
	}
	serverKexInit, err := t.readPacket()
	if err != nil {
		return nil, fmt.Errorf("kexinit: %v", err)
	}
	if serverKexInit[0] != msgKexInit {
		return nil, fmt.Errorf("expected KEXINIT, got %d", serverKexInit[0])
	}
	var priv [32]byte
	rand.Read(priv[:])
	pub, _ := curve25519.X25519(priv[:], curve25519.Basepoint)
	if err := t.writePacket(cat([]byte{msgKexECDHInit}, sshString(string(pub)))); err != nil {
		return nil, err
	}
	reply, err := t.readPacket()
	if err != nil {
		return nil, fmt.Errorf("ecdh reply: %v", err)
	}
	if reply[0] != msgKexECDHReply {
		return nil, fmt.Errorf("expected KEX_ECDH_REPLY, got %d", reply[0])
	}
	rd := &reader{b: reply[1:]}
	hostKey, serverPub := rd.str(), rd.str()
	rd.str() // signature (not verified: a test tool)
	if rd.err {
		return nil, errors.New("malformed KEX_ECDH_REPLY")
	}
	shared, err := curve25519.X25519(priv[:], serverPub)
	if err != nil {
		return nil, err
	}
	K := mpint(shared)
	h := sha256.New()
	h.Write(sshString(clientVersion))
	h.Write(sshString(serverVersion))
	h.Write(sshString(string(t.clientKexInit)))
	h.Write(sshString(string(serverKexInit)))
	h.Write(sshString(string(hostKey)))
	h.Write(sshString(string(pub)))
	h.Write(sshString(string(serverPub)))
	h.Write(K)
	H := h.Sum(nil)
	t.sessionID = H
	derive := func(letter byte, n int) []byte {
		d := sha256.New()
		d.Write(K)
		d.Write(H)
		d.Write([]byte{letter})
		d.Write(t.sessionID)
		out := d.Sum(nil)
		for len(out) < n {
			d2 := sha256.New()
			d2.Write(K)
			d2.Write(H)
			d2.Write(out)
			out = append(out, d2.Sum(nil)...)
		}
		return out[:n]
	}
	if err := t.writePacket([]byte{msgNewKeys}); err != nil {
		return nil, err
	}
	nk, err := t.readPacket()
	if err != nil {
		return nil, fmt.Errorf("newkeys: %v", err)
	}
	if nk[0] != msgNewKeys {
		return nil, fmt.Errorf("expected NEWKEYS, got %d", nk[0])
	}
	blkOut, _ := aes.NewCipher(derive('C', 16))
	t.encOut = cipher.NewCTR(blkOut, derive('A', 16))
	t.macOut = hmac.New(sha256.New, derive('E', 32))
	blkIn, _ := aes.NewCipher(derive('D', 16))
	t.encIn = cipher.NewCTR(blkIn, derive('B', 16))
	t.macIn = hmac.New(sha256.New, derive('F', 32))
	emit("KEX-DONE")
	return t, nil
}

// blob returns the named key blob and the algorithm to name in the request.
func blob(name string, o options) (string, []byte, error) {
	var certBlob []byte
	if o.certFile != "" {
		data, err := os.ReadFile(o.certFile)
		if err != nil {
			return "", nil, err
		}
		fields := strings.Fields(string(data))
		if len(fields) < 2 {
			return "", nil, errors.New("bad -cert file")
		}
		if certBlob, err = base64.StdEncoding.DecodeString(fields[1]); err != nil {
			return "", nil, err
		}
	}
	const certAlg = "ssh-ed25519-cert-v01@openssh.com"
	switch name {
	case "ed25519-short":
		return "ssh-ed25519", cat(sshString("ssh-ed25519"), sshString(strings.Repeat("k", 16))), nil
	case "rsa-huge":
		n := make([]byte, 16*1024+1)
		rand.Read(n[1:])
		n[0] = 0
		n[1] |= 0x80
		return "rsa-sha2-256", cat(sshString("ssh-rsa"), mpint([]byte{1, 0, 1}), u32(uint32(len(n))), n), nil
	case "cert-valid":
		return certAlg, certBlob, nil
	case "cert-truncated":
		return certAlg, certBlob[:len(certBlob)/2], nil
	case "cert-trailing":
		return certAlg, append(append([]byte{}, certBlob...), []byte("trailing garbage")...), nil
	case "cert-bad-length":
		// type string, nonce (32), ed25519 key (32), serial, type → then the key id's length field.
		b := append([]byte{}, certBlob...)
		off := 4 + len(certAlg) + 4 + 32 + 4 + 32 + 8 + 4
		if len(b) < off+4 {
			return "", nil, errors.New("certificate too short")
		}
		binary.BigEndian.PutUint32(b[off:], 0x7fffffff)
		return certAlg, b, nil
	}
	return "", nil, fmt.Errorf("unknown blob %q", name)
}

func runRaw(o options) error {
	start := time.Now()
	t, err := connectRaw(o)
	if err != nil {
		return err
	}
	defer t.conn.Close()
	for _, step := range list(o.script) {
		name, arg := step, ""
		if i := strings.IndexByte(step, ':'); i >= 0 {
			name, arg = step[:i], step[i+1:]
		}
		var err error
		switch name {
		case "service":
			if err = t.writePacket(cat([]byte{msgServiceRequest}, sshString("ssh-userauth"))); err == nil {
				var p []byte
				if p, err = t.readPacket(); err == nil {
					emit("RECV %d", p[0])
					if p[0] != msgServiceAccept {
						err = fmt.Errorf("expected SERVICE_ACCEPT, got %d", p[0])
					}
				}
			}
		case "msg":
			var n int
			if n, err = strconv.Atoi(arg); err == nil {
				err = t.writePacket([]byte{byte(n)})
			}
		case "open-session":
			err = t.writePacket(cat([]byte{msgChannelOpen}, sshString("session"), u32(0), u32(1<<20), u32(32768)))
		case "global-keepalive":
			err = t.writePacket(cat([]byte{msgGlobalRequest}, sshString("keepalive@openssh.com"), []byte{1}))
		case "query":
			var alg string
			var b []byte
			if alg, b, err = blob(arg, o); err == nil {
				err = t.writePacket(cat([]byte{msgUserauthRequest}, sshString(o.user), sshString("ssh-connection"),
					sshString("publickey"), []byte{0}, sshString(alg), sshString(string(b))))
			}
		case "forged-signature":
			var alg string
			var b []byte
			if alg, b, err = blob("cert-valid", o); err == nil {
				sig := cat(sshString("ssh-ed25519"), sshString(strings.Repeat("\x01", 64)))
				err = t.writePacket(cat([]byte{msgUserauthRequest}, sshString(o.user), sshString("ssh-connection"),
					sshString("publickey"), []byte{1}, sshString(alg), sshString(string(b)), sshString(string(sig))))
			}
		case "hugelen":
			err = t.writeRawHeader(16 << 20)
		case "kexinit":
			if err = t.writePacket(kexInitPayload()); err == nil {
				err = t.writePacket(kexInitPayload())
			}
		case "sleep":
			var ms int
			if ms, err = strconv.Atoi(arg); err == nil {
				time.Sleep(time.Duration(ms) * time.Millisecond)
			}
		default:
			err = fmt.Errorf("unknown step %q", step)
		}
		if err != nil {
			emit("STEP %s FAILED %v", step, err)
			emit("CLOSED %.3f", time.Since(start).Seconds())
			return nil
		}
		emit("SENT %s", step)
	}
	t.conn.SetReadDeadline(time.Now().Add(o.wait))
	for {
		p, err := t.readPacket()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				emit("TIMEOUT")
			} else {
				emit("CLOSED %.3f", time.Since(start).Seconds())
			}
			return nil
		}
		if p[0] == msgDisconnect {
			rd := &reader{b: p[1:]}
			code := rd.u32()
			emit("RECV 1 %d %q", code, string(rd.str()))
			continue
		}
		emit("RECV %d", p[0])
	}
}
