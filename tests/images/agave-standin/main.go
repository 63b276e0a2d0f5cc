// Command agave-standin stands in for Agave's solana-test-validator and agave-validator in
// end-to-end tests, where real Agave cannot be built. It is one binary installed under both
// names: it serves the JSON-RPC, the WebSocket and the admin socket the charts use, with a slot
// that advances and a lag and restart window that tests change through `standin set`.
package main

import (
	"bufio"
	"cmp"
	"encoding/json"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

const base58Alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"

func main() {
	prog := filepath.Base(os.Args[0])
	args := os.Args[1:]
	// Run by its own name, as in tests, the program to be comes first.
	if prog == "agave-standin" && len(args) > 0 {
		prog, args = args[0], args[1:]
	}
	switch prog {
	case "solana-test-validator":
		os.Exit(serve(prog, args))
	case "agave-validator":
		os.Exit(validator(args))
	}
	fmt.Fprintf(os.Stderr, "agave-standin: run as solana-test-validator or agave-validator, not %q\n", prog)
	os.Exit(2)
}

// logf prints an agave-like log line. Stdout is unbuffered, so `kubectl logs` sees it at once.
func logf(level, format string, args ...any) {
	stamp := time.Now().UTC().Format("2006-01-02T15:04:05.000Z")
	fmt.Printf("[%s %-5s agave_standin] %s\n", stamp, level, fmt.Sprintf(format, args...))
}

// validator runs agave-validator: the node itself, or one of the client subcommands.
func validator(args []string) int {
	i := subcommandIndex(args)
	if i < 0 {
		return serve("agave-validator", args)
	}
	rest := append(slices.Clone(args[:i]), args[i+1:]...)
	switch args[i] {
	case "exit":
		return exitCommand(rest)
	case "wait-for-restart-window":
		return waitCommand(rest)
	case "standin":
		return standinCommand(rest)
	}
	return fail(2, "subcommand %q is not supported by the stand-in (exit, wait-for-restart-window, standin)", args[i])
}

// subcommandIndex finds the subcommand among the node's flags, which come before it, or -1.
// A bare word right after a flag is taken as that flag's value unless it names a subcommand
// the stand-in knows: the node's own flags are too many to tell which take a value.
func subcommandIndex(args []string) int {
	for i, arg := range args {
		if strings.HasPrefix(arg, "-") {
			continue
		}
		if arg == "exit" || arg == "wait-for-restart-window" || arg == "standin" {
			return i
		}
		if i > 0 && strings.HasPrefix(args[i-1], "--") && !strings.Contains(args[i-1], "=") {
			continue
		}
		return i
	}
	return -1
}

func fail(code int, format string, args ...any) int {
	fmt.Fprintf(os.Stderr, "agave-validator: %s\n", fmt.Sprintf(format, args...))
	return code
}

// parseFlags reads a client subcommand's arguments strictly, as the real CLI does, so a wrong
// flag in a chart fails here too. Flags come as --name, --name value or --name=value; --ledger
// is always allowed. It returns the flags given and the bare words.
func parseFlags(args, bools, values []string) (map[string]string, []string, error) {
	flags := map[string]string{}
	var words []string
	for i := 0; i < len(args); i++ {
		if !strings.HasPrefix(args[i], "--") {
			words = append(words, args[i])
			continue
		}
		name, value, inline := strings.Cut(args[i][2:], "=")
		switch {
		case name == "ledger" || slices.Contains(values, name):
			if !inline {
				if i+1 == len(args) {
					return nil, nil, fmt.Errorf("--%s needs a value", name)
				}
				i++
				value = args[i]
			}
		case slices.Contains(bools, name) && !inline:
			value = "true"
		default:
			return nil, nil, fmt.Errorf("unknown flag %s", args[i])
		}
		flags[name] = value
	}
	return flags, words, nil
}

func adminSocket(flags map[string]string) string {
	ledger := flags["ledger"]
	if ledger == "" {
		ledger = defaultLedger()
	}
	return filepath.Join(ledger, "admin.rpc")
}

func defaultLedger() string {
	if ledger := os.Getenv("LEDGER"); ledger != "" {
		return ledger
	}
	return "/data/ledger"
}

// adminCall sends one request to the running node and returns its state as it answers.
func adminCall(socket string, req adminRequest) (state, error) {
	conn, err := net.DialTimeout("unix", socket, 5*time.Second)
	if err != nil {
		return state{}, fmt.Errorf("cannot reach the validator's admin socket: %w", err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return state{}, err
	}
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return state{}, fmt.Errorf("admin socket %s: %w", socket, err)
	}
	line, err := bufio.NewReader(conn).ReadBytes('\n')
	if err != nil {
		return state{}, fmt.Errorf("admin socket %s: no answer: %w", socket, err)
	}
	var reply adminReply
	if err := json.Unmarshal(line, &reply); err != nil {
		return state{}, fmt.Errorf("admin socket %s: malformed answer: %w", socket, err)
	}
	if reply.Error != "" {
		return state{}, fmt.Errorf("admin socket %s: %s", socket, reply.Error)
	}
	return reply.state, nil
}

// Idle-time, delinquency and snapshot checks are all folded into the restart window.
var windowFlags = []string{"min-idle-time", "max-delinquent-stake"}
var windowSkips = []string{"skip-new-snapshot-check", "skip-health-check"}

func exitCommand(args []string) int {
	flags, words, err := parseFlags(args, append([]string{"force", "monitor"}, windowSkips...), windowFlags)
	if err == nil && len(words) > 0 {
		err = fmt.Errorf("unexpected argument %q", words[0])
	}
	if err != nil {
		return fail(2, "exit: %v", err)
	}
	socket := adminSocket(flags)
	if flags["force"] == "" {
		if err := waitForRestartWindow(socket); err != nil {
			return fail(1, "%v", err)
		}
	}
	if _, err := adminCall(socket, adminRequest{Method: "exit"}); err != nil {
		return fail(1, "%v", err)
	}
	fmt.Println("Validator exit requested")
	if flags["monitor"] != "" {
		// The admin socket goes away as the node exits.
		for {
			if _, err := adminCall(socket, adminRequest{Method: "get"}); err != nil {
				break
			}
			time.Sleep(time.Second)
		}
		fmt.Println("Validator exited")
	}
	return 0
}

func waitCommand(args []string) int {
	flags, words, err := parseFlags(args, windowSkips, append([]string{"identity"}, windowFlags...))
	if err == nil && len(words) > 0 {
		err = fmt.Errorf("unexpected argument %q", words[0])
	}
	if err != nil {
		return fail(2, "wait-for-restart-window: %v", err)
	}
	if err := waitForRestartWindow(adminSocket(flags)); err != nil {
		return fail(1, "%v", err)
	}
	return 0
}

func waitForRestartWindow(socket string) error {
	for {
		s, err := adminCall(socket, adminRequest{Method: "get"})
		if err != nil {
			return err
		}
		if s.RestartWindowIn == 0 {
			fmt.Println("restart window open")
			return nil
		}
		fmt.Printf("waiting for a restart window: next leader slot in %d s\n", s.RestartWindowIn)
		time.Sleep(time.Second)
	}
}

// standinCommand is the stand-in's own: `standin get` prints the node's state and
// `standin set [--lag N] [--restart-window-in SECONDS]` changes it, both as one JSON line.
func standinCommand(args []string) int {
	flags, words, err := parseFlags(args, nil, []string{"lag", "restart-window-in"})
	if err != nil {
		return fail(2, "standin: %v", err)
	}
	lag, lagErr := optionalUint(flags, "lag")
	window, windowErr := optionalUint(flags, "restart-window-in")
	if err := cmp.Or(lagErr, windowErr); err != nil {
		return fail(2, "standin: %v", err)
	}
	req := adminRequest{Method: "get"}
	switch {
	case slices.Equal(words, []string{"get"}) && lag == nil && window == nil:
	case slices.Equal(words, []string{"set"}) && (lag != nil || window != nil):
		req = adminRequest{Method: "set", Lag: lag, RestartWindowIn: window}
	default:
		return fail(2, "usage: standin get | standin set [--lag N] [--restart-window-in SECONDS]")
	}
	s, err := adminCall(adminSocket(flags), req)
	if err != nil {
		return fail(1, "%v", err)
	}
	line, _ := json.Marshal(s) // a struct of numbers and a string always encodes
	fmt.Println(string(line))
	return 0
}

// optionalUint reads a whole-number flag that may be absent.
func optionalUint(flags map[string]string, name string) (*uint64, error) {
	text, ok := flags[name]
	if !ok {
		return nil, nil
	}
	n, err := strconv.ParseUint(text, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("--%s %q: want a whole number", name, text)
	}
	return &n, nil
}

// base58 encodes like Solana's pubkeys (Bitcoin's alphabet): leading zero bytes as '1's,
// the rest as one big number in base 58.
func base58(b []byte) string {
	zeros := 0
	for zeros < len(b) && b[zeros] == 0 {
		zeros++
	}
	n := new(big.Int).SetBytes(b)
	base, digit := big.NewInt(58), new(big.Int)
	var digits []byte
	for n.Sign() > 0 {
		n.DivMod(n, base, digit)
		digits = append(digits, base58Alphabet[digit.Int64()])
	}
	slices.Reverse(digits)
	return strings.Repeat("1", zeros) + string(digits)
}
