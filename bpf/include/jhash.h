/* SPDX-License-Identifier: GPL-2.0 */
/* Jenkins hash, bit-exact with the kernel's include/linux/jhash.h (lookup3.c, Bob Jenkins, 2006,
 * public domain), so that a BPF program and the kernel (or a control plane using the same code)
 * agree on a hash. Like the kernel's, jhash() reads the key in CPU byte order (little endian here).
 *
 * Call with a constant length: the loops then unroll and the verifier sees fixed key offsets.
 */
#ifndef BPFLAB_JHASH_H
#define BPFLAB_JHASH_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>

#define JHASH_INITVAL	0xdeadbeef

static __always_inline __u32 rol32(__u32 word, unsigned int shift)
{
	return (word << shift) | (word >> (32 - shift));
}

#define __jhash_mix(a, b, c)				\
{							\
	a -= c;  a ^= rol32(c, 4);  c += b;		\
	b -= a;  b ^= rol32(a, 6);  a += c;		\
	c -= b;  c ^= rol32(b, 8);  b += a;		\
	a -= c;  a ^= rol32(c, 16); c += b;		\
	b -= a;  b ^= rol32(a, 19); a += c;		\
	c -= b;  c ^= rol32(b, 4);  b += a;		\
}

#define __jhash_final(a, b, c)				\
{							\
	c ^= b; c -= rol32(b, 14);			\
	a ^= c; a -= rol32(c, 11);			\
	b ^= a; b -= rol32(a, 25);			\
	c ^= b; c -= rol32(b, 16);			\
	a ^= c; a -= rol32(c, 4);			\
	b ^= a; b -= rol32(a, 14);			\
	c ^= b; c -= rol32(b, 24);			\
}

static __always_inline __u32 __jhash_get32(const __u8 *k)
{
	__u32 v;

	__builtin_memcpy(&v, k, sizeof(v));	/* no alignment assumed */
	return v;
}

/* Hash @length bytes at @key. */
static __always_inline __u32 jhash(const void *key, __u32 length, __u32 initval)
{
	const __u8 *k = key;
	__u32 a, b, c;

	a = b = c = JHASH_INITVAL + length + initval;

	while (length > 12) {
		a += __jhash_get32(k);
		b += __jhash_get32(k + 4);
		c += __jhash_get32(k + 8);
		__jhash_mix(a, b, c);
		length -= 12;
		k += 12;
	}
	switch (length) {
	case 12: c += (__u32)k[11] << 24;	/* fall through */
	case 11: c += (__u32)k[10] << 16;	/* fall through */
	case 10: c += (__u32)k[9] << 8;		/* fall through */
	case 9:  c += k[8];			/* fall through */
	case 8:  b += (__u32)k[7] << 24;	/* fall through */
	case 7:  b += (__u32)k[6] << 16;	/* fall through */
	case 6:  b += (__u32)k[5] << 8;		/* fall through */
	case 5:  b += k[4];			/* fall through */
	case 4:  a += (__u32)k[3] << 24;	/* fall through */
	case 3:  a += (__u32)k[2] << 16;	/* fall through */
	case 2:  a += (__u32)k[1] << 8;		/* fall through */
	case 1:  a += k[0];
		 __jhash_final(a, b, c);
		 break;
	case 0:	/* nothing left to add */
		break;
	}
	return c;
}

/* Hash @length 32-bit words at @k. */
static __always_inline __u32 jhash2(const __u32 *k, __u32 length, __u32 initval)
{
	__u32 a, b, c;

	a = b = c = JHASH_INITVAL + (length << 2) + initval;

	while (length > 3) {
		a += k[0];
		b += k[1];
		c += k[2];
		__jhash_mix(a, b, c);
		length -= 3;
		k += 3;
	}
	switch (length) {
	case 3: c += k[2];	/* fall through */
	case 2: b += k[1];	/* fall through */
	case 1: a += k[0];
		__jhash_final(a, b, c);
		break;
	case 0:	/* nothing left to add */
		break;
	}
	return c;
}

static __always_inline __u32 __jhash_nwords(__u32 a, __u32 b, __u32 c, __u32 initval)
{
	a += initval;
	b += initval;
	c += initval;
	__jhash_final(a, b, c);
	return c;
}

static __always_inline __u32 jhash_3words(__u32 a, __u32 b, __u32 c, __u32 initval)
{
	return __jhash_nwords(a, b, c, initval + JHASH_INITVAL + (3 << 2));
}

static __always_inline __u32 jhash_2words(__u32 a, __u32 b, __u32 initval)
{
	return __jhash_nwords(a, b, 0, initval + JHASH_INITVAL + (2 << 2));
}

static __always_inline __u32 jhash_1word(__u32 a, __u32 initval)
{
	return __jhash_nwords(a, 0, 0, initval + JHASH_INITVAL + (1 << 2));
}

#endif /* BPFLAB_JHASH_H */
