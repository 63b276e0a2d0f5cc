// Command kindnet-standin stands in for kindnetd, kind's CNI daemon, on a one-node kind
// cluster: it writes the CNI config that lets the node's pods get addresses, then idles until
// stopped. One node needs no routes to other nodes, so the whole pod subnet is this node's.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
)

const defaultConfigPath = "/etc/cni/net.d/10-kindnet.conflist"

type ipam struct {
	Type    string                `json:"type"`
	Ranges  [][]map[string]string `json:"ranges"`
	Routes  []map[string]string   `json:"routes"`
	DataDir string                `json:"dataDir"`
}

type ptpPlugin struct {
	Type   string `json:"type"`
	IPMasq bool   `json:"ipMasq"`
	MTU    int    `json:"mtu"`
	IPAM   ipam   `json:"ipam"`
}

type portmapPlugin struct {
	Type         string          `json:"type"`
	Capabilities map[string]bool `json:"capabilities"`
}

type conflist struct {
	CNIVersion string `json:"cniVersion"`
	Name       string `json:"name"`
	Plugins    []any  `json:"plugins"`
}

func main() {
	log.SetPrefix("kindnet-standin: ")
	subnet, err := ipv4Subnet(os.Getenv("POD_SUBNET"))
	if err != nil {
		log.Fatal(err) // exits 1
	}
	path := os.Getenv("CNI_CONFIG_PATH")
	if path == "" {
		path = defaultConfigPath
	}
	content := render(subnet)
	written, err := writeIfChanged(path, content)
	if err != nil {
		log.Fatal(err)
	}
	if written {
		log.Printf("wrote %s for pod subnet %s:\n%s", path, subnet, content)
	} else {
		log.Printf("%s is up to date for pod subnet %s", path, subnet)
	}

	// kindnetd keeps running as a DaemonSet pod; so does its stand-in.
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	log.Printf("received %v, exiting", <-signals)
}

// ipv4Subnet picks the IPv4 subnet from POD_SUBNET, which is "v4", "v6" or "v4,v6" when the
// cluster is dual-stack.
func ipv4Subnet(podSubnet string) (netip.Prefix, error) {
	if strings.TrimSpace(podSubnet) == "" {
		return netip.Prefix{}, errors.New("POD_SUBNET is not set (want the cluster's pod subnet, like 10.244.0.0/16)")
	}
	for _, field := range strings.Split(podSubnet, ",") {
		prefix, err := netip.ParsePrefix(strings.TrimSpace(field))
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("POD_SUBNET %q: %w", podSubnet, err)
		}
		if prefix.Addr().Is4() {
			return prefix.Masked(), nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("POD_SUBNET %q has no IPv4 subnet", podSubnet)
}

func render(subnet netip.Prefix) []byte {
	config := conflist{
		CNIVersion: "0.4.0",
		Name:       "kindnet",
		Plugins: []any{
			ptpPlugin{
				Type: "ptp",
				MTU:  1500,
				IPAM: ipam{
					Type:    "host-local",
					Ranges:  [][]map[string]string{{{"subnet": subnet.String()}}},
					Routes:  []map[string]string{{"dst": "0.0.0.0/0"}},
					DataDir: "/run/cni-ipam-state",
				},
			},
			portmapPlugin{Type: "portmap", Capabilities: map[string]bool{"portMappings": true}},
		},
	}
	content, _ := json.MarshalIndent(config, "", "  ") // plain structs always encode
	return append(content, '\n')
}

// writeIfChanged replaces path with content through a rename, so the container runtime,
// which watches the directory, never reads half a file. It reports whether it wrote.
func writeIfChanged(path string, content []byte) (bool, error) {
	if current, err := os.ReadFile(path); err == nil && bytes.Equal(current, content) {
		return false, nil
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, err
	}
	// The .tmp suffix keeps the runtime from loading the file before it is whole.
	tmp, err := os.CreateTemp(dir, ".10-kindnet-*.tmp")
	if err != nil {
		return false, err
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	_, err = tmp.Write(content)
	if err = errors.Join(err, tmp.Chmod(0o644), tmp.Sync(), tmp.Close()); err != nil {
		return false, err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return false, err
	}
	return true, nil
}
