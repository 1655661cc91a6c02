// SPDX-License-Identifier: GPL-2.0
/*
 * uio_cxl_doorbell - the lab's guest driver for QEMU's ivshmem-doorbell device
 * (docs/doorbell.md section 5).
 *
 * QEMU 7.2's ivshmem-doorbell raises its interrupts through MSI-X only, and only once the
 * guest enabled MSI-X; uio_pci_generic works with INTx and never enables MSI-X, and
 * Debian's kernel has no VFIO no-IOMMU mode. This driver is the small remainder: it
 * enables one MSI-X vector and hands it to user space through uio, and it lets user space
 * ring a peer without mapping the register bank (a 256-byte BAR that need not be
 * page-aligned, which uio cannot map).
 *
 * User space, on /dev/uioN (published by the lab as /dev/cxl/doorbell):
 *   read(fd, &count, 4)  blocks until vector 0 fired since the last read; returns the
 *                        32-bit interrupt count (uio). poll()/select(): POLLIN when one did.
 *   write(fd, &value, 4) rings: value = (peer id << 16) | vector goes to the Doorbell
 *                        register (BAR0 + 12). QEMU delivers it only to the peers whose
 *                        eventfds the hypervisor's doorbell server gave this VM.
 *   mmap(fd, offset 0)   map 0: the device's own memory (BAR2), where the doorbell server
 *                        keeps this VM's directory (its own peer id at offset 16).
 *
 * Only ivshmem devices with an MSI-X capability are taken: ivshmem-plain (the lab's
 * regions, the same 1af4:1110) has none and is left to uio_pci_generic.
 */
#include <linux/io.h>
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/uio_driver.h>

#define DRV_NAME "uio_cxl_doorbell"
#define IVSHMEM_INTR_MASK 0x00
#define IVSHMEM_IV_POSITION 0x08
#define IVSHMEM_DOORBELL 0x0c

struct cxl_doorbell {
	struct uio_info info;
	struct pci_dev *pdev;
	void __iomem *regs;
	char version[32];
};

static irqreturn_t cxl_doorbell_irq(int irq, struct uio_info *info)
{
	/* MSI-X is edge-triggered and needs no acknowledgement: count it. */
	return IRQ_HANDLED;
}

/* write(2) of 4 bytes on /dev/uioN: ring a peer. */
static int cxl_doorbell_ring(struct uio_info *info, s32 value)
{
	struct cxl_doorbell *db = info->priv;

	writel((u32)value, db->regs + IVSHMEM_DOORBELL);
	return 0;
}

static int cxl_doorbell_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct cxl_doorbell *db;
	int rc;

	if (!pdev->msix_cap)
		return -ENODEV;	/* ivshmem-plain: a region, not a doorbell */
	db = devm_kzalloc(&pdev->dev, sizeof(*db), GFP_KERNEL);
	if (!db)
		return -ENOMEM;
	rc = pcim_enable_device(pdev);
	if (rc)
		return rc;
	rc = pcim_iomap_regions(pdev, BIT(0) | BIT(2), DRV_NAME);
	if (rc)
		return rc;
	db->regs = pcim_iomap_table(pdev)[0];
	db->pdev = pdev;
	/* An MSI-X message is a write by the device: QEMU drops it unless bus mastering is on. */
	pci_set_master(pdev);
	rc = pci_alloc_irq_vectors(pdev, 1, 1, PCI_IRQ_MSIX);
	if (rc < 0) {
		dev_err(&pdev->dev, "cannot enable an MSI-X vector: %d\n", rc);
		return rc;
	}
	/* The device masks nothing under MSI-X; the legacy mask register stays as it is. */
	snprintf(db->version, sizeof(db->version), "1 peer %u",
		 readl(db->regs + IVSHMEM_IV_POSITION));
	db->info.name = "cxl_doorbell";
	db->info.version = db->version;
	db->info.irq = pci_irq_vector(pdev, 0);
	db->info.irq_flags = 0;
	db->info.handler = cxl_doorbell_irq;
	db->info.irqcontrol = cxl_doorbell_ring;
	db->info.priv = db;
	db->info.mem[0].name = "directory";
	db->info.mem[0].addr = pci_resource_start(pdev, 2);
	db->info.mem[0].size = pci_resource_len(pdev, 2);
	db->info.mem[0].memtype = UIO_MEM_PHYS;
	rc = uio_register_device(&pdev->dev, &db->info);
	if (rc) {
		pci_free_irq_vectors(pdev);
		return rc;
	}
	pci_set_drvdata(pdev, db);
	dev_info(&pdev->dev, "doorbell: peer %u, MSI-X vector 0 on irq %ld\n",
		 readl(db->regs + IVSHMEM_IV_POSITION), db->info.irq);
	return 0;
}

static void cxl_doorbell_remove(struct pci_dev *pdev)
{
	struct cxl_doorbell *db = pci_get_drvdata(pdev);

	uio_unregister_device(&db->info);
	pci_free_irq_vectors(pdev);
}

static const struct pci_device_id cxl_doorbell_ids[] = {
	{ PCI_DEVICE(0x1af4, 0x1110) },
	{ 0 }
};
MODULE_DEVICE_TABLE(pci, cxl_doorbell_ids);

static struct pci_driver cxl_doorbell_driver = {
	.name = DRV_NAME,
	.id_table = cxl_doorbell_ids,
	.probe = cxl_doorbell_probe,
	.remove = cxl_doorbell_remove,
};
module_pci_driver(cxl_doorbell_driver);

MODULE_DESCRIPTION("CXL-DSM Lab: ivshmem-doorbell interrupts and rings for user space (uio)");
MODULE_AUTHOR("CXL-DSM Lab contributors");
MODULE_LICENSE("GPL");
