/* npu-smi for the pooled device: `npu-smi info` prints the table Ascend's own
 * npu-smi prints (its columns and layout), from xpupool's libdcmi stand-in, so
 * the scripts that read it (device counts, memory in use) see the pooled device
 * with the tenant's quota as its memory. Other subcommands are not there.
 * Built by scripts/build-acl-libs.sh into <target>/release/acl/bin/, which
 * `xpupool run` puts on PATH. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

struct chip_info { unsigned char type[32], name[32], ver[32]; unsigned int aicore_cnt; };
struct hbm_info {
    unsigned long long memory_size; unsigned int freq; unsigned long long memory_usage;
    int temp; unsigned int bandwidth_util_rate;
};
struct proc_mem_info { int proc_id; unsigned long proc_mem_usage; };

int dcmi_init(void);
int dcmi_get_card_num_list(int *count, int *list, int len);
int dcmi_get_device_chip_info(int card, int chip, struct chip_info *info);
int dcmi_get_device_hbm_info(int card, int chip, struct hbm_info *info);
int dcmi_get_device_health(int card, int chip, unsigned int *health);
int dcmi_get_device_utilization_rate(int card, int chip, int kind, unsigned int *rate);
int dcmi_get_device_resource_info(int card, int chip, struct proc_mem_info *list, int *count);
int dcmi_get_dcmi_version(char *buffer, unsigned int len);

#define RULE "+---------------------------+---------------+----------------------------------------------------+"
#define BOLD "+===========================+===============+====================================================+"

static const char *health_text(unsigned int h) {
    switch (h) {
    case 0: return "OK";
    case 1: return "Warning";
    case 2: return "Alarm";
    case 3: return "Critical";
    default: return "UNKNOWN";
    }
}

/* The name of process `pid`, or "-". */
static void process_name(int pid, char *out, size_t len) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/comm", pid);
    FILE *f = fopen(path, "r");
    snprintf(out, len, "-");
    if (f) {
        if (fgets(out, (int)len, f)) out[strcspn(out, "\n")] = 0;
        fclose(f);
    }
}

static int info(void) {
    int cards[64], count = 0, rc;
    char version[64] = "";
    if ((rc = dcmi_init()) != 0 || (rc = dcmi_get_card_num_list(&count, cards, 64)) != 0) {
        fprintf(stderr, "npu-smi: no pooled NPU could be reached (dcmi error %d); run under `xpupool run`\n", rc);
        return 1;
    }
    dcmi_get_dcmi_version(version, sizeof version);
    printf("%s\n| npu-smi %-22s Version: %-57s|\n%s\n", RULE, "(xpupool)", version, RULE);
    printf("| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|\n");
    printf("| Chip                      | Bus-Id        | AICore(%%)   Memory-Usage(MB)  HBM-Usage(MB)        |\n%s\n", BOLD);
    for (int i = 0; i < count; i++) {
        struct chip_info chip = {0};
        struct hbm_info hbm = {0};
        unsigned int health = 0xffffffff, util = 0;
        dcmi_get_device_chip_info(cards[i], 0, &chip);
        dcmi_get_device_hbm_info(cards[i], 0, &hbm);
        dcmi_get_device_health(cards[i], 0, &health);
        dcmi_get_device_utilization_rate(cards[i], 0, 2, &util);
        printf("| %-5d %-19s | %-13s | %-11s %-17s %-4d / %-15d|\n", cards[i], (char *)chip.name,
               health_text(health), "NA", "NA", 0, 0);
        printf("| %-25d | %-13s | %-11u %-4d / %-11d %5llu/ %-12llu|\n%s\n", 0, "NA", util, 0, 0,
               hbm.memory_usage, hbm.memory_size, BOLD);
    }
    printf("%s\n| NPU     Chip              | Process id    | Process name             | Process memory(MB)      |\n%s\n", RULE, BOLD);
    for (int i = 0; i < count; i++) {
        struct proc_mem_info procs[32];
        int n = 32;
        if (dcmi_get_device_resource_info(cards[i], 0, procs, &n) != 0 || n == 0) {
            printf("| No running processes found in NPU %-62d|\n", cards[i]);
        }
        for (int p = 0; p < n; p++) {
            char name[64];
            process_name(procs[p].proc_id, name, sizeof name);
            printf("| %-7d %-17d | %-13d | %-24s | %-24lu|\n", cards[i], 0, procs[p].proc_id, name,
                   procs[p].proc_mem_usage >> 20);
        }
        printf("%s\n", BOLD);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "info") == 0 && argc == 2) return info();
    fprintf(stderr, "usage: npu-smi info\n(xpupool's npu-smi shows the pooled device; other subcommands are not there)\n");
    return 2;
}
