package main

import (
	"bufio"
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	firstSlot    = 1000
	slotTime     = 400 * time.Millisecond
	slotsInEpoch = 432000
	featureSet   = 3294202862
)

// state is what `standin get` prints and every admin answer carries.
type state struct {
	Slot            uint64 `json:"slot"`
	Lag             uint64 `json:"lag"`
	RestartWindowIn uint64 `json:"restartWindowIn"`
	Identity        string `json:"identity"`
}

// The admin socket takes one JSON line per connection and answers with one.
type adminRequest struct {
	Method          string  `json:"method"` // get, set or exit
	Lag             *uint64 `json:"lag,omitempty"`
	RestartWindowIn *uint64 `json:"restartWindowIn,omitempty"`
}

type adminReply struct {
	state
	Error string `json:"error,omitempty"`
}

type config struct {
	rpcPort  uint64
	ledger   string
	identity string
	maxLag   uint64
	lag      uint64
	window   uint64
}

// parseConfig picks the few flags the stand-in needs out of the real programs' many: each
// unknown one is ignored, whether it takes a value or not.
func parseConfig(args []string) (config, error) {
	cfg := config{rpcPort: 8899, ledger: defaultLedger(), maxLag: 128}
	sum := sha256.Sum256([]byte("agave-standin")) // a made-up identity, the same every run
	cfg.identity = base58(sum[:])
	rpcPort, _ := flagValue(args, "rpc-port")
	distance, _ := flagValue(args, "health-check-slot-distance")
	for _, setting := range []struct {
		name, text string
		target     *uint64
	}{
		{"--rpc-port", rpcPort, &cfg.rpcPort},
		{"--health-check-slot-distance", distance, &cfg.maxLag},
		{"STANDIN_LAG", os.Getenv("STANDIN_LAG"), &cfg.lag},
		{"STANDIN_RESTART_WINDOW_IN", os.Getenv("STANDIN_RESTART_WINDOW_IN"), &cfg.window},
	} {
		if setting.text == "" {
			continue
		}
		n, err := strconv.ParseUint(setting.text, 10, 64)
		if err != nil {
			return cfg, fmt.Errorf("%s %q: want a whole number", setting.name, setting.text)
		}
		*setting.target = n
	}
	if cfg.rpcPort == 0 || cfg.rpcPort >= 65535 {
		return cfg, fmt.Errorf("--rpc-port %d: want 1-65534 (the WebSocket takes the next port)", cfg.rpcPort)
	}
	if ledger, ok := flagValue(args, "ledger"); ok {
		cfg.ledger = ledger
	}
	if path, ok := flagValue(args, "identity"); ok {
		var err error
		if cfg.identity, err = readIdentity(path); err != nil {
			return cfg, err
		}
	}
	return cfg, nil
}

// flagValue returns the last value of --name, given as --name value or --name=value.
func flagValue(args []string, name string) (string, bool) {
	value, found := "", false
	for i, arg := range args {
		if arg == "--"+name && i+1 < len(args) {
			value, found = args[i+1], true
		} else if v, ok := strings.CutPrefix(arg, "--"+name+"="); ok {
			value, found = v, true
		}
	}
	return value, found
}

// readIdentity returns the base58 pubkey of a Solana keypair file: a JSON array of 64 bytes,
// the secret half then the public half.
func readIdentity(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--identity: %w", err)
	}
	var values []int // []byte would want base64
	if err := json.Unmarshal(data, &values); err != nil || len(values) != 64 {
		return "", fmt.Errorf("--identity %s: not a keypair (want a JSON array of 64 bytes)", path)
	}
	pubkey := make([]byte, 32)
	for i, v := range values[32:] {
		if v < 0 || v > 255 {
			return "", fmt.Errorf("--identity %s: %d is not a byte", path, v)
		}
		pubkey[i] = byte(v)
	}
	return base58(pubkey), nil
}

// node is the running stand-in: a slot that advances, and what tests set.
type node struct {
	identity      string
	maxLag        uint64
	subscriptions atomic.Uint64
	exit          chan struct{} // closed by the first admin exit request
	exitOnce      sync.Once

	mu          sync.Mutex
	slot        uint64
	lag         uint64
	windowOpens time.Time
	advanced    chan struct{} // closed and replaced at every new slot
}

func serve(prog string, args []string) int {
	// Subscribed before anything answers: a signal sent as soon as the node answers (or while
	// the parent ignores SIGINT, which a child inherits) must not be lost.
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	logf("INFO", "%s starting with arguments %q", prog, args)
	cfg, err := parseConfig(args)
	if err != nil {
		logf("ERROR", "%v", err)
		return 1
	}
	if err := os.MkdirAll(cfg.ledger, 0o755); err != nil {
		logf("ERROR", "ledger: %v", err)
		return 1
	}
	n := &node{
		identity:    cfg.identity,
		maxLag:      cfg.maxLag,
		exit:        make(chan struct{}),
		slot:        firstSlot,
		lag:         cfg.lag,
		windowOpens: time.Now().Add(time.Duration(cfg.window) * time.Second),
		advanced:    make(chan struct{}),
	}
	rpcAddr, wsAddr := fmt.Sprintf("0.0.0.0:%d", cfg.rpcPort), fmt.Sprintf("0.0.0.0:%d", cfg.rpcPort+1)
	rpcListener, err := net.Listen("tcp", rpcAddr)
	if err != nil {
		logf("ERROR", "JSON-RPC: %v", err)
		return 1
	}
	wsListener, err := net.Listen("tcp", wsAddr)
	if err != nil {
		logf("ERROR", "WebSocket: %v", err)
		return 1
	}
	socket := filepath.Join(cfg.ledger, "admin.rpc")
	_ = os.Remove(socket) // left behind by a node that was killed
	adminListener, err := net.Listen("unix", socket)
	if err != nil {
		logf("ERROR", "admin socket: %v", err)
		return 1
	}
	rpcServer := &http.Server{Handler: n.rpcHandler(), ReadHeaderTimeout: 10 * time.Second}
	wsServer := &http.Server{Handler: http.HandlerFunc(n.serveWebSocket), ReadHeaderTimeout: 10 * time.Second}
	go rpcServer.Serve(rpcListener)
	go wsServer.Serve(wsListener)
	go n.serveAdmin(adminListener)
	go n.advance()
	logf("INFO", "identity %s, JSON-RPC on %s, WebSocket on %s, admin socket %s, health check slot distance %d",
		cfg.identity, rpcAddr, wsAddr, socket, cfg.maxLag)
	logf("INFO", "lag %d, restart window in %d s", cfg.lag, cfg.window)

	select {
	case sig := <-signals:
		logf("INFO", "received %v, shutting down", sig)
	case <-n.exit:
		// A real node takes a while to close its ledger.
		logf("INFO", "closing the ledger before exiting")
		time.Sleep(time.Second)
	}
	rpcServer.Close()
	wsServer.Close()
	adminListener.Close() // removes the socket file
	logf("INFO", "shut down")
	return 0
}

func (n *node) advance() {
	slots := time.NewTicker(slotTime)
	report := time.NewTicker(time.Second)
	for {
		select {
		case <-slots.C:
			n.mu.Lock()
			n.slot++
			close(n.advanced)
			n.advanced = make(chan struct{})
			n.mu.Unlock()
		case <-report.C:
			s := n.state()
			logf("INFO", "new slot %d (lag %d)", s.Slot, s.Lag)
		}
	}
}

// nextSlot returns a channel closed when the slot next advances.
func (n *node) nextSlot() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.advanced
}

func (n *node) state() state {
	n.mu.Lock()
	defer n.mu.Unlock()
	wait := math.Ceil(time.Until(n.windowOpens).Seconds())
	return state{Slot: n.slot, Lag: n.lag, RestartWindowIn: uint64(max(0, wait)), Identity: n.identity}
}

func (n *node) serveAdmin(listener net.Listener) {
	for {
		conn, err := listener.Accept()
		if err != nil {
			return // closed at shutdown
		}
		go n.answerAdmin(conn)
	}
}

func (n *node) answerAdmin(conn net.Conn) {
	defer conn.Close()
	if conn.SetDeadline(time.Now().Add(10*time.Second)) != nil {
		return
	}
	line, err := bufio.NewReader(conn).ReadBytes('\n')
	if err != nil {
		return
	}
	var req adminRequest
	reply := adminReply{Error: "malformed request"}
	if json.Unmarshal(line, &req) == nil {
		reply = n.admin(req)
	}
	_ = json.NewEncoder(conn).Encode(reply)
}

func (n *node) admin(req adminRequest) adminReply {
	switch req.Method {
	case "get":
	case "set":
		n.mu.Lock()
		if req.Lag != nil {
			n.lag = *req.Lag
		}
		if req.RestartWindowIn != nil {
			n.windowOpens = time.Now().Add(time.Duration(*req.RestartWindowIn) * time.Second)
		}
		n.mu.Unlock()
		s := n.state()
		logf("INFO", "settings changed: lag %d, restart window in %d s", s.Lag, s.RestartWindowIn)
	case "exit":
		logf("INFO", "validator exit requested through the admin socket")
		n.exitOnce.Do(func() { close(n.exit) })
	default:
		return adminReply{Error: fmt.Sprintf("unknown method %q", req.Method)}
	}
	return adminReply{state: n.state()}
}

// --- JSON-RPC ---------------------------------------------------------------------------

type rpcRequest struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Method  string          `json:"method"`
	Params  json.RawMessage `json:"params"`
}

type rpcResponse struct {
	JSONRPC string          `json:"jsonrpc"`
	Result  any             `json:"result,omitempty"`
	Error   *rpcError       `json:"error,omitempty"`
	ID      json.RawMessage `json:"id"`
}

type rpcError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Data    any    `json:"data,omitempty"`
}

// encode marshals the stand-in's own types, which always encode.
func encode(v any) []byte {
	data, _ := json.Marshal(v)
	return data
}

func (n *node) rpcHandler() http.Handler {
	mux := http.NewServeMux()
	// Like agave, 200 even when behind: the body tells.
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		if n.state().Lag > n.maxLag {
			io.WriteString(w, "behind")
		} else {
			io.WriteString(w, "ok")
		}
	})
	mux.HandleFunc("POST /{$}", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
		if err != nil {
			http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(n.handle(body))
	})
	return mux
}

// handle answers a JSON-RPC request or batch.
func (n *node) handle(body []byte) []byte {
	body = bytes.TrimSpace(body)
	parseError := rpcResponse{JSONRPC: "2.0", Error: &rpcError{Code: -32700, Message: "Parse error"}}
	if !json.Valid(body) {
		return encode(parseError)
	}
	if body[0] != '[' {
		return encode(n.answer(body))
	}
	var batch []json.RawMessage
	if json.Unmarshal(body, &batch) != nil {
		return encode(parseError)
	}
	if len(batch) == 0 {
		return encode(rpcResponse{JSONRPC: "2.0", Error: &rpcError{Code: -32600, Message: "Invalid request"}})
	}
	replies := make([]rpcResponse, len(batch))
	for i, raw := range batch {
		replies[i] = n.answer(raw)
	}
	return encode(replies)
}

func (n *node) answer(raw json.RawMessage) rpcResponse {
	var req rpcRequest
	if json.Unmarshal(raw, &req) != nil || req.JSONRPC != "2.0" || req.Method == "" {
		return rpcResponse{JSONRPC: "2.0", Error: &rpcError{Code: -32600, Message: "Invalid request"}, ID: req.ID}
	}
	result, err := n.call(req.Method)
	return rpcResponse{JSONRPC: "2.0", Result: result, Error: err, ID: req.ID}
}

// call answers a method; every one the stand-in knows ignores its params (commitment and such).
func (n *node) call(method string) (any, *rpcError) {
	s := n.state()
	switch method {
	case "getHealth":
		if s.Lag > n.maxLag {
			return nil, &rpcError{
				Code:    -32005,
				Message: fmt.Sprintf("Node is behind by %d slots", s.Lag),
				Data:    map[string]uint64{"numSlotsBehind": s.Lag},
			}
		}
		return "ok", nil
	case "getVersion":
		return map[string]any{"solana-core": "4.0.0-standin", "feature-set": uint32(featureSet)}, nil
	case "getSlot", "getBlockHeight":
		return s.Slot, nil
	case "getMaxShredInsertSlot":
		return s.Slot + s.Lag, nil
	case "getIdentity":
		return map[string]string{"identity": s.Identity}, nil
	case "getEpochInfo":
		return map[string]uint64{
			"absoluteSlot":     s.Slot,
			"blockHeight":      s.Slot,
			"epoch":            s.Slot / slotsInEpoch,
			"slotIndex":        s.Slot % slotsInEpoch,
			"slotsInEpoch":     slotsInEpoch,
			"transactionCount": s.Slot * 4,
		}, nil
	}
	return nil, &rpcError{Code: -32601, Message: "Method not found"}
}

// --- WebSocket (RFC 6455, just what slot subscriptions need) ----------------------------

const (
	wsGUID         = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xa
	maxMessage     = 1 << 20
)

var errProtocol = errors.New("WebSocket protocol error")

type wsConn struct {
	node *node
	conn net.Conn
	r    *bufio.Reader
	done chan struct{} // closed when the connection ends
	wmu  sync.Mutex    // the reader and the subscriptions both write

	// a fragmented message being put together
	partialOp byte
	partial   []byte
}

func (n *node) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	key := r.Header.Get("Sec-WebSocket-Key")
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") || key == "" {
		http.Error(w, "this is the JSON-RPC WebSocket port: expected a WebSocket upgrade request", http.StatusBadRequest)
		return
	}
	conn, rw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	c := &wsConn{node: n, conn: conn, r: rw.Reader, done: make(chan struct{})}
	defer func() {
		close(c.done)
		conn.Close()
	}()
	accept := sha1.Sum([]byte(key + wsGUID))
	conn.SetDeadline(time.Time{}) // an idle subscriber is fine
	fmt.Fprintf(rw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Accept: %s\r\n\r\n", base64.StdEncoding.EncodeToString(accept[:]))
	if rw.Flush() != nil {
		return
	}
	c.serve()
}

func (c *wsConn) serve() {
	subscriptions := map[uint64]chan struct{}{} // id -> closed on unsubscribe
	for {
		op, msg, err := c.next()
		if errors.Is(err, errProtocol) {
			c.write(opClose, binary.BigEndian.AppendUint16(nil, 1002))
		}
		if err != nil {
			return
		}
		switch op {
		case opText:
			c.answer(msg, subscriptions)
		case opBinary:
			c.write(opClose, binary.BigEndian.AppendUint16(nil, 1003))
			return
		case opPing:
			c.write(opPong, msg)
		case opClose:
			c.write(opClose, msg[:min(len(msg), 2)]) // echo the status code
			return
		}
	}
}

func (c *wsConn) answer(msg []byte, subscriptions map[uint64]chan struct{}) {
	var req rpcRequest
	_ = json.Unmarshal(msg, &req) // anything but the subscriptions is answered as over HTTP
	switch req.Method {
	case "slotSubscribe":
		id := c.node.subscriptions.Add(1)
		stop := make(chan struct{})
		subscriptions[id] = stop
		c.write(opText, encode(rpcResponse{JSONRPC: "2.0", Result: id, ID: req.ID}))
		go c.notifySlots(id, stop)
	case "slotUnsubscribe":
		reply := rpcResponse{JSONRPC: "2.0", ID: req.ID}
		var ids []uint64
		if json.Unmarshal(req.Params, &ids) == nil && len(ids) == 1 && subscriptions[ids[0]] != nil {
			close(subscriptions[ids[0]])
			delete(subscriptions, ids[0])
			reply.Result = true
		} else {
			reply.Error = &rpcError{Code: -32602, Message: "Invalid subscription id."}
		}
		c.write(opText, encode(reply))
	default:
		c.write(opText, c.node.handle(msg))
	}
}

func (c *wsConn) notifySlots(id uint64, stop <-chan struct{}) {
	for {
		select {
		case <-c.node.nextSlot():
		case <-stop:
			return
		case <-c.done:
			return
		}
		s := c.node.state().Slot
		note := map[string]any{
			"jsonrpc": "2.0",
			"method":  "slotNotification",
			"params": map[string]any{
				"result":       map[string]uint64{"parent": s - 1, "root": s - 32, "slot": s},
				"subscription": id,
			},
		}
		if c.write(opText, encode(note)) != nil {
			return
		}
	}
}

// next returns the next whole message, or a control frame, which may come between fragments.
func (c *wsConn) next() (byte, []byte, error) {
	for {
		fin, op, payload, err := c.readFrame()
		if err != nil {
			return 0, nil, err
		}
		switch {
		case op >= opClose:
			return op, payload, nil
		case op == opContinuation && c.partialOp == 0, op != opContinuation && c.partialOp != 0:
			return 0, nil, fmt.Errorf("%w: fragments out of order", errProtocol)
		case op == opContinuation:
			c.partial = append(c.partial, payload...)
		default:
			c.partialOp, c.partial = op, payload
		}
		if len(c.partial) > maxMessage {
			return 0, nil, fmt.Errorf("%w: message over %d bytes", errProtocol, maxMessage)
		}
		if fin {
			op, msg := c.partialOp, c.partial
			c.partialOp, c.partial = 0, nil
			return op, msg, nil
		}
	}
}

func (c *wsConn) readFrame() (fin bool, op byte, payload []byte, err error) {
	var head [2]byte
	if _, err = io.ReadFull(c.r, head[:]); err != nil {
		return
	}
	fin, op = head[0]&0x80 != 0, head[0]&0x0f
	length := uint64(head[1] & 0x7f)
	switch {
	case head[0]&0x70 != 0:
		return fin, op, nil, fmt.Errorf("%w: reserved bits set", errProtocol)
	case head[1]&0x80 == 0:
		return fin, op, nil, fmt.Errorf("%w: client frames must be masked", errProtocol)
	case op >= opClose && (length > 125 || !fin):
		return fin, op, nil, fmt.Errorf("%w: bad control frame", errProtocol)
	}
	switch length {
	case 126:
		var ext [2]byte
		_, err = io.ReadFull(c.r, ext[:])
		length = uint64(binary.BigEndian.Uint16(ext[:]))
	case 127:
		var ext [8]byte
		_, err = io.ReadFull(c.r, ext[:])
		length = binary.BigEndian.Uint64(ext[:])
	}
	if err != nil {
		return
	}
	if length > maxMessage {
		return fin, op, nil, fmt.Errorf("%w: frame over %d bytes", errProtocol, maxMessage)
	}
	var mask [4]byte
	if _, err = io.ReadFull(c.r, mask[:]); err != nil {
		return
	}
	payload = make([]byte, length)
	if _, err = io.ReadFull(c.r, payload); err != nil {
		return
	}
	for i := range payload {
		payload[i] ^= mask[i%4]
	}
	return fin, op, payload, nil
}

// write sends one unmasked, unfragmented frame, as a server does.
func (c *wsConn) write(op byte, payload []byte) error {
	frame := []byte{0x80 | op}
	switch n := len(payload); {
	case n < 126:
		frame = append(frame, byte(n))
	case n <= 0xffff:
		frame = binary.BigEndian.AppendUint16(append(frame, 126), uint16(n))
	default:
		frame = binary.BigEndian.AppendUint64(append(frame, 127), uint64(n))
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return err
	}
	_, err := c.conn.Write(append(frame, payload...))
	return err
}
