package main

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// The fields of scylla-operator's ScyllaCluster (scylla.scylladb.com/v1) that Sterling's
// manifest may use, copied from the operator's API; its own Go module is not served by the
// module proxy this checker is built from, so a field outside this copy is refused even if
// the operator would take it.
type scyllaCluster struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              scyllaClusterSpec `json:"spec"`
}

type scyllaClusterSpec struct {
	Version                      string           `json:"version"`
	Repository                   string           `json:"repository,omitempty"`
	AgentVersion                 string           `json:"agentVersion,omitempty"`
	AgentRepository              string           `json:"agentRepository,omitempty"`
	DeveloperMode                bool             `json:"developerMode,omitempty"`
	AutomaticOrphanedNodeCleanup bool             `json:"automaticOrphanedNodeCleanup,omitempty"`
	Sysctls                      []string         `json:"sysctls,omitempty"`
	Datacenter                   scyllaDatacenter `json:"datacenter"`
}

type scyllaDatacenter struct {
	Name  string       `json:"name"`
	Racks []scyllaRack `json:"racks"`
}

type scyllaRack struct {
	Name      string                      `json:"name"`
	Members   int32                       `json:"members"`
	Storage   scyllaStorage               `json:"storage"`
	Resources corev1.ResourceRequirements `json:"resources"`
	Placement *scyllaPlacement            `json:"placement,omitempty"`
}

type scyllaStorage struct {
	Capacity         string  `json:"capacity"`
	StorageClassName *string `json:"storageClassName,omitempty"`
}

type scyllaPlacement struct {
	NodeAffinity    *corev1.NodeAffinity    `json:"nodeAffinity,omitempty"`
	PodAffinity     *corev1.PodAffinity     `json:"podAffinity,omitempty"`
	PodAntiAffinity *corev1.PodAntiAffinity `json:"podAntiAffinity,omitempty"`
	Tolerations     []corev1.Toleration     `json:"tolerations,omitempty"`
}

// checkScyllaCluster decodes a ScyllaCluster strictly into the copy above and checks what
// the operator would refuse: a version, and racks with members and storage.
func checkScyllaCluster(doc []byte) error {
	var cluster scyllaCluster
	if err := yaml.UnmarshalStrict(doc, &cluster); err != nil {
		return err
	}
	if cluster.Spec.Version == "" || len(cluster.Spec.Datacenter.Racks) == 0 {
		return errMissing("spec.version and spec.datacenter.racks")
	}
	for _, rack := range cluster.Spec.Datacenter.Racks {
		if rack.Members < 1 || rack.Storage.Capacity == "" {
			return errMissing("members and storage.capacity in rack " + rack.Name)
		}
	}
	return nil
}
