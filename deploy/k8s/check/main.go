// Command check decodes every object of the YAML streams given as arguments (or stdin)
// strictly into the official Kubernetes API types: an unknown field, a wrong type or an
// unknown kind is an error. Used by CI on the output of `kustomize build` for every overlay.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// typeMeta is what every object says it is.
type typeMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name string `json:"name"`
	} `json:"metadata"`
}

// known maps apiVersion/kind to a new value of its official type.
var known = map[string]func() any{
	"v1/ConfigMap":                             func() any { return &corev1.ConfigMap{} },
	"v1/Secret":                                func() any { return &corev1.Secret{} },
	"v1/Service":                               func() any { return &corev1.Service{} },
	"v1/ServiceAccount":                        func() any { return &corev1.ServiceAccount{} },
	"v1/Namespace":                             func() any { return &corev1.Namespace{} },
	"apps/v1/Deployment":                       func() any { return &appsv1.Deployment{} },
	"apps/v1/StatefulSet":                      func() any { return &appsv1.StatefulSet{} },
	"policy/v1/PodDisruptionBudget":            func() any { return &policyv1.PodDisruptionBudget{} },
	"autoscaling/v2/HorizontalPodAutoscaler":   func() any { return &autoscalingv2.HorizontalPodAutoscaler{} },
	"networking.k8s.io/v1/NetworkPolicy":       func() any { return &networkingv1.NetworkPolicy{} },
	"rbac.authorization.k8s.io/v1/Role":        func() any { return &rbacv1.Role{} },
	"rbac.authorization.k8s.io/v1/RoleBinding": func() any { return &rbacv1.RoleBinding{} },
}

// custom holds kinds that are not in k8s.io/api (operators' resources), checked by
// checkCustom instead.
var custom = map[string]func([]byte) error{
	"scylla.scylladb.com/v1/ScyllaCluster": checkScyllaCluster,
}

func main() {
	var inputs []io.Reader
	for _, path := range os.Args[1:] {
		f, err := os.Open(path)
		if err != nil {
			fail(err)
		}
		defer f.Close()
		inputs = append(inputs, f)
	}
	if len(inputs) == 0 {
		inputs = append(inputs, os.Stdin)
	}
	counts := map[string]int{}
	for _, input := range inputs {
		reader := utilyaml.NewYAMLReader(bufio.NewReader(input))
		for {
			doc, err := reader.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				fail(err)
			}
			if len(bytes.TrimSpace(doc)) == 0 {
				continue
			}
			kind, err := check(doc)
			if err != nil {
				fail(err)
			}
			counts[kind]++
		}
	}
	total := 0
	var parts []string
	for kind, n := range counts {
		total += n
		parts = append(parts, fmt.Sprintf("%s=%d", kind, n))
	}
	if total == 0 {
		fail(errors.New("no objects"))
	}
	fmt.Printf("%d objects decode strictly: %s\n", total, strings.Join(parts, " "))
}

// check decodes one document strictly into its official type; returns its kind.
func check(doc []byte) (string, error) {
	var meta typeMeta
	if err := yaml.Unmarshal(doc, &meta); err != nil {
		return "", err
	}
	key := meta.APIVersion + "/" + meta.Kind
	where := fmt.Sprintf("%s %q", key, meta.Metadata.Name)
	if meta.Metadata.Name == "" {
		return "", fmt.Errorf("%s: no metadata.name", key)
	}
	if newValue, ok := known[key]; ok {
		if err := yaml.UnmarshalStrict(doc, newValue()); err != nil {
			return "", fmt.Errorf("%s: %w", where, err)
		}
		return meta.Kind, nil
	}
	if checkCustom, ok := custom[key]; ok {
		if err := checkCustom(doc); err != nil {
			return "", fmt.Errorf("%s: %w", where, err)
		}
		return meta.Kind, nil
	}
	return "", fmt.Errorf("%s: not a kind this checker knows", where)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "check:", err)
	os.Exit(1)
}

// errMissing says which required fields a custom object lacks.
func errMissing(what string) error {
	return fmt.Errorf("missing %s", what)
}
