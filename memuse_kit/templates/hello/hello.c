// SPDX-License-Identifier: GPL-2.0
/*
 * Part 1 of the memuse lab report: the smallest kernel module there is.
 */
#include <linux/init.h>
#include <linux/module.h>
#include <linux/printk.h>

static int __init hello_init(void)
{
	pr_alert("Hello, world!\n");
	return 0;
}

static void __exit hello_exit(void)
{
	pr_alert("Goodbye, world.\n");
}

module_init(hello_init);
module_exit(hello_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Hello world from a kernel module");
