import unittest

import calc


class CalcTest(unittest.TestCase):
    def test_add(self):
        self.assertEqual(calc.add(2, 3), 5)

    def test_multiply(self):
        self.assertEqual(calc.multiply(4, 5), 20)

    def test_divide(self):
        self.assertEqual(calc.divide(9, 3), 3)


if __name__ == "__main__":
    unittest.main()
